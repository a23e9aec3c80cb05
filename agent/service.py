"""The agent's run loop: connect, subscribe, ingest, reconnect with backoff, stop cleanly.

One thread does the ingest (paho's ``loop()``, decoding, SQLite commits, acks), so there
are no locks and the order "COMMIT, then PUBACK in arrival order" holds by construction.
The background stages (DAG, export, upload, disk budget; agent/scheduler.py) run on
scheduler threads with their own connections, and metrics on their own HTTP thread; the
only thing they tell the ingest loop is "the disk budget is exhausted": then it stops
committing and acknowledging, so the broker keeps the messages, until space returns.
``stop()`` may be called from a signal handler or another thread; the loop notices within
``IDLE_POLL_S``.
"""

from __future__ import annotations

import logging
import random
import select
import signal
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from schemas import Reading, decode

from .buffer import Buffer
from .config import AgentConfig, check_files
from .errors import AgentError, BrokerError, StoreError
from .ingest import FATAL_CONNACK, Batcher, Decoder, make_client, subscriptions
from .mqttio import BufferedClient
from .notify import Notifier

if TYPE_CHECKING:
    import httpx

    from .metrics import MetricsServer
    from .scheduler import Scheduler, Stages

log = logging.getLogger(__name__)

# Longest the loop blocks in select(): bounds how late a stop request is noticed.
IDLE_POLL_S = 0.1
# While connected and idle, the open observation interval's alive mark moves this often;
# after a SIGKILL at most this much observed time is given up (it becomes "unknown").
ALIVE_EVERY_S = 5.0
# A failing COMMIT is retried this often; the broker keeps the messages in flight meanwhile.
STORE_RETRY_S = 1.0
STATS_EVERY_S = 60.0
# paho's keepalive bookkeeping (PINGREQ, ping timeout) needs no finer clock than this.
MISC_EVERY_S = 0.25


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def backoff_delay(attempt: int, low: float, high: float, rand: Callable[[], float]) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random.

    The fixed half keeps a flapping broker from being hammered; the random half keeps a
    fleet of gateways from reconnecting in lockstep after the broker comes back.
    """
    step = min(high, low * (2 ** min(attempt, 30)))
    return step / 2 + rand() * step / 2


class Service:
    """One agent: a persistent MQTT session feeding the SQLite buffer."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        client_factory: Callable[[AgentConfig], BufferedClient] = make_client,
        clock_ms: Callable[[], int] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        notifier: Notifier | None = None,
        decoder: Decoder = decode,
        on_acked: Callable[[Sequence[Reading], Sequence[tuple[int, int]]], None] | None = None,
        background: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self._background = background
        self._transport = transport
        self.stages: Stages | None = None
        self.scheduler: Scheduler | None = None
        self.metrics: MetricsServer | None = None
        self._was_paused = False
        self._client_factory = client_factory
        self._clock_ms = clock_ms
        self._mono = monotonic
        self._rand = rand
        self.notifier = notifier or Notifier()
        self._decoder = decoder
        self._on_acked = on_acked
        self._stopping = False
        self._fatal: AgentError | None = None
        self._socket_open = False
        self._connected = False
        self._lost = False
        self._sub_mid: int | None = None
        self._interval_id: int | None = None
        self._ever_subscribed = False
        self._attempt = 0
        self._next_attempt = 0.0
        self._store_retry_at = 0.0
        self._store_failing = False
        self._last_alive = 0.0
        self._last_stats = 0.0
        self.buffer: Buffer | None = None
        self.batcher: Batcher | None = None
        self.client: BufferedClient | None = None

    # -- control ---------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to commit, ack, close the observation interval and return."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("%s: committing, acknowledging and stopping", signal.strsignal(signum))
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def subscribed(self) -> bool:
        return self._interval_id is not None

    # -- main loop -------------------------------------------------------------------

    def run(self) -> None:
        """Run until ``stop()``; raise an AgentError the operator must act on."""
        check_files(self.cfg)
        self.buffer = Buffer.open(self.cfg.db_path)
        recovered = self.buffer.recover_intervals()
        if recovered:
            log.warning(
                "closed %d observation interval(s) left open by an unclean stop at their "
                "last commit time",
                recovered,
            )
        self.batcher = Batcher(
            self.buffer,
            self.cfg.ingest.batch_max,
            self.cfg.ingest.batch_interval_ms / 1000,
            self._clock_ms,
            decoder=self._decoder,
            on_acked=self._on_acked,
        )
        self.client = self._client_factory(self.cfg)
        self._wire(self.client)
        if self._background:
            self._start_background()
        log.info(
            "agent %s: buffer %s, broker %s:%d, client id %r, topics %s",
            self.cfg.gateway_id,
            self.cfg.db_path,
            self.cfg.mqtt.host,
            self.cfg.mqtt.port,
            self.cfg.client_id,
            self.cfg.mqtt.topics,
        )
        try:
            self._loop()
        finally:
            self._shutdown()
        if self._fatal is not None:
            raise self._fatal

    def _start_background(self) -> None:
        # imported here: a Service without background stages (tests, tools) stays light
        from .metrics import MetricsServer
        from .scheduler import Scheduler, Stages

        self.stages = Stages(self.cfg, transport=self._transport, clock_ms=self._clock_ms)
        if self.batcher is not None:  # each COMMIT feeds the disk budget's counter
            self.batcher.on_commit = self.stages.disk.note_commit
        try:
            # before the first message: a full disk must hold acks from the start
            self.stages.check_disk()
        except AgentError as exc:
            log.error("disk check: %s", exc)
        self.scheduler = Scheduler(self.stages)
        self.scheduler.start()
        address = self.cfg.metrics_address
        if address is not None:
            self.metrics = MetricsServer(address, self._metrics, self._healthy)
            if not self.metrics.start():
                self.metrics = None

    def _metrics(self) -> list[Any]:
        from .metrics import gather

        b = self.batcher
        counters = {} if b is None else {
            "received": b.received, "stored": b.stored, "duplicates": b.duplicates,
            "quarantined": b.quarantined,
        }  # fmt: skip
        return gather(self.cfg.db_path, counters, self.stages, self.subscribed, self._clock_ms())

    def _healthy(self) -> bool:
        return not self._store_failing and self._fatal is None

    @property
    def paused(self) -> bool:
        """True while the disk budget is exhausted and ``on_full`` is backpressure."""
        return self.stages is not None and self.stages.disk.full.is_set()

    def _loop(self) -> None:
        assert self.client is not None and self.batcher is not None
        client, batcher = self.client, self.batcher
        last_misc = 0.0
        while not self._stopping and self._fatal is None:
            now = self._mono()
            if not self._socket_open:
                self._housekeeping(now)
                if now < self._next_attempt:
                    time.sleep(min(IDLE_POLL_S, self._next_attempt - now))
                    continue
                self._try_connect(now)
                continue
            paused = self._check_paused()
            # paused: no commit, no ack; the broker stops at its in-flight window and keeps
            # the rest queued, and the socket is still read so keepalive answers arrive
            timeout = IDLE_POLL_S if paused else batcher.seconds_until_due(now, IDLE_POLL_S)
            rc = self._pump(client, timeout)
            now = self._mono()
            if rc == mqtt.MQTT_ERR_SUCCESS and now - last_misc >= MISC_EVERY_S:
                rc = client.loop_misc()
                last_misc = now
            if batcher.due(now) and now >= self._store_retry_at and not paused:
                self._flush(now)
            if rc != mqtt.MQTT_ERR_SUCCESS or self._lost:
                self._connection_lost(rc)
            self._housekeeping(now)

    def _check_paused(self) -> bool:
        paused = self.paused
        if paused != self._was_paused:
            self._was_paused = paused
            if paused:
                log.error(
                    "disk budget exhausted: holding %d message(s) unacknowledged; the broker "
                    "keeps the rest until space returns (see [storage] in docs/agent.md)",
                    self.batcher.pending if self.batcher else 0,
                )
            else:
                log.info("disk space is back: committing and acknowledging again")
        return paused

    def _pump(self, client: BufferedClient, timeout: float) -> int:
        """Wait for the socket (unless input is already buffered), then read packets.

        Reading goes on while bytes are buffered, up to a full batch, so one COMMIT and one
        ack write cover everything that arrived together.
        """
        assert self.batcher is not None
        sock = client.socket()
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        if not client.has_buffered_input():
            wlist = [sock] if client.want_write() else []
            try:
                readable, writable, _ = select.select([sock], wlist, [], timeout)
            except (OSError, ValueError):
                return mqtt.MQTT_ERR_CONN_LOST
            if writable:
                rc = client.loop_write()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    return rc
            if not readable:
                return mqtt.MQTT_ERR_SUCCESS
        batch_max = self.batcher.batch_max
        if self.paused and self.batcher.pending >= batch_max:
            batch_max = 1  # read control packets; the broker's window bounds the rest
        for _ in range(batch_max):
            rc = client.loop_read()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return rc
            if not client.has_buffered_input() or self.batcher.pending >= batch_max:
                break
        return mqtt.MQTT_ERR_SUCCESS

    def _try_connect(self, now: float) -> None:
        assert self.client is not None
        try:
            self.client.reconnect()
        except (OSError, ValueError) as exc:
            delay = backoff_delay(
                self._attempt, self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s,
                self._rand,
            )  # fmt: skip
            self._attempt += 1
            self._next_attempt = now + delay
            log.warning(
                "cannot reach the broker at %s:%d (%s); retrying in %.1f s",
                self.cfg.mqtt.host,
                self.cfg.mqtt.port,
                exc,
                delay,
            )
            return
        self._socket_open = True
        self._lost = False

    def _flush(self, now: float) -> None:
        assert self.batcher is not None and self.client is not None
        ack = self.client.ack if self._connected else None
        try:
            # Corked: the whole batch's PUBACKs leave in one write.
            with self.client.corked():
                self.batcher.flush(ack, self._alive_mark())
        except StoreError as exc:
            # Not acked, still pending: the broker holds the messages until we can commit.
            log.error("%s; retrying in %.0f s", exc, STORE_RETRY_S)
            self._store_failing = True
            self._store_retry_at = now + STORE_RETRY_S
            return
        if self._store_failing:
            log.info("the buffer accepts writes again")
        self._store_failing = False
        self._last_alive = now

    def _alive_mark(self) -> tuple[int, int] | None:
        if self._interval_id is None:
            return None
        return (self._interval_id, self._clock_ms())

    def _connection_lost(self, rc: int) -> None:
        assert self.batcher is not None and self.client is not None
        was_subscribed = self.subscribed
        self._connected = False
        self._socket_open = False
        self._lost = False
        # Commit what arrived (durable now); its acks died with the connection, and the
        # broker's redelivery of those messages is dropped by the dedup key.
        if self.batcher.pending:
            self._flush(self._mono())
        self._close_interval("disconnect")
        delay = backoff_delay(
            self._attempt, self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s,
            self._rand,
        )  # fmt: skip
        self._attempt += 1
        self._next_attempt = self._mono() + delay
        if self._fatal is None:
            level = logging.WARNING if was_subscribed else logging.INFO
            log.log(
                level,
                "connection to the broker lost (%s); reconnecting in %.1f s",
                mqtt.error_string(rc) if rc else "closed",
                delay,
            )

    def _close_interval(self, how: str) -> None:
        if self._interval_id is None or self.buffer is None:
            return
        interval_id, self._interval_id = self._interval_id, None
        try:
            self.buffer.close_interval(interval_id, self._clock_ms(), how)
        except StoreError as exc:
            # Left open, it is closed at its last alive mark on the next start.
            log.error("%s", exc)

    def _housekeeping(self, now: float) -> None:
        if not self._store_failing:
            self.notifier.watchdog(now)
        if self._interval_id is not None and now - self._last_alive >= ALIVE_EVERY_S:
            assert self.buffer is not None
            if self.batcher is not None and self.batcher.pending == 0:
                try:
                    self.buffer.write((), (), self._alive_mark())
                    self._last_alive = now
                except StoreError as exc:
                    log.error("%s", exc)
        if now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            b = self.batcher
            if b is not None and b.received:
                log.info(
                    "received %d, stored %d new, %d duplicates, %d quarantined, %d commits",
                    b.received,
                    b.stored,
                    b.duplicates,
                    b.quarantined,
                    b.commits,
                )

    def _shutdown(self) -> None:
        client, batcher = self.client, self.batcher
        try:
            if self.scheduler is not None:
                self.scheduler.stop()
            if self.metrics is not None:
                self.metrics.stop()
            # held back by a full disk: not committed, not acked; the broker redelivers them
            if batcher is not None and batcher.pending and client is not None and not self.paused:
                self._flush(self._mono())
            if client is not None and self._socket_open:
                # Let the acks leave before the DISCONNECT.
                _drain_writes(client, 1.0)
            self._close_interval("shutdown")
            self.notifier.stopping()
            if client is not None and self._socket_open:
                client.disconnect()
                _drain_writes(client, 0.2)
        finally:
            if self.stages is not None:
                self.stages.close()
            if self.buffer is not None:
                self.buffer.close()
            b = self.batcher
            if b is not None:
                log.info(
                    "stopped: received %d, stored %d new, %d duplicates, %d quarantined",
                    b.received,
                    b.stored,
                    b.duplicates,
                    b.quarantined,
                )

    # -- paho callbacks (run inside client.loop on this thread) -----------------------

    def _wire(self, client: mqtt.Client) -> None:
        client.on_connect = self._guard(self._on_connect)
        client.on_subscribe = self._guard(self._on_subscribe)
        client.on_disconnect = self._guard(self._on_disconnect)
        client.on_message = self._on_message

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except AgentError as exc:
                if self._fatal is None and isinstance(exc, BrokerError):
                    self._fatal = exc
                log.error("%s", exc)
            except Exception:
                log.exception("%s failed; the network loop goes on", fn.__name__)

        return guarded

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        assert self.batcher is not None
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        self.batcher.add(topic, bytes(msg.payload), msg.mid, msg.qos, self._mono())

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            fix = FATAL_CONNACK.get(reason.value)
            if fix is not None:
                raise BrokerError(
                    f"broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port} refused the connection: "
                    f"{fix}"
                )
            log.warning("broker refused the connection (%s); will retry", reason)
            return
        self._connected = True
        if self._ever_subscribed and not flags.session_present:
            log.warning(
                "the broker had no session for %r: messages published while the agent was "
                "away were not queued for it (session expired or broker state lost)",
                self.cfg.client_id,
            )
        log.info(
            "connected to %s:%d (session present: %s)",
            self.cfg.mqtt.host,
            self.cfg.mqtt.port,
            flags.session_present,
        )
        rc, mid = client.subscribe(subscriptions(self.cfg))
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("subscribe could not be sent (%s)", mqtt.error_string(rc))
            return
        self._sub_mid = mid

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        if mid != self._sub_mid:
            return
        refused = [t for t, r in zip(self.cfg.mqtt.topics, reasons, strict=False) if r.is_failure]
        if refused:
            raise BrokerError(
                f"broker refused the subscription to {refused}: check its ACL for client "
                f"{self.cfg.client_id!r} or fix [mqtt] topics"
            )
        downgraded = [t for t, r in zip(self.cfg.mqtt.topics, reasons, strict=False) if r == 0]
        if downgraded:
            log.warning("broker granted QoS 0 for %s: those messages are not acknowledged "
                        "and can be lost", downgraded)  # fmt: skip
        assert self.buffer is not None
        self._interval_id = self.buffer.open_interval(self._clock_ms())
        self._last_alive = self._mono()
        self._attempt = 0
        log.info("subscribed to %s with QoS 1", self.cfg.mqtt.topics)
        if not self._ever_subscribed:
            self._ever_subscribed = True
            self.notifier.ready()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self._stopping:
            self._lost = True
            if reason is not None and reason.is_failure:
                log.info("broker closed the connection: %s", reason)


def _drain_writes(client: BufferedClient, timeout: float) -> None:
    """Write what paho and the cork buffer still hold, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while client.want_write() and time.monotonic() < deadline:
        sock = client.socket()
        if sock is None:
            return
        try:
            _, writable, _ = select.select([], [sock], [], 0.01)
        except (OSError, ValueError):
            return
        if writable and client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
            return
