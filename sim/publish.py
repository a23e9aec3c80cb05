"""Publishing the fleet's message stream to an MQTT broker at QoS 1.

All devices share one publisher connection: thousands of simulated devices must not mean
thousands of sockets, and one connection keeps every device's messages in order. Two clients
implement it: ``wire`` (default, pipelined, see sim/wire.py for why) and ``paho``
(paho-mqtt 2.x, about 4x slower per message here, see BENCHMARKS.md).

The LWT is the hard part when time is simulated: a real will carries whatever the device put
in it at connect time, and the broker sends it when the socket dies. To give each crash its
own simulated ``ts``, every crash opens a short-lived connection whose will is that crash's
``offline`` status and then drops the socket without DISCONNECT (``wire.send_will``); a few
run in parallel, and a device's next message waits until its will went out.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .errors import BrokerError
from .wire import WireClient, send_will

log = logging.getLogger(__name__)

DEFAULT_PORT = 1883
# Messages handed to paho but not yet acknowledged; bounds memory, keeps the pipe full.
MAX_UNACKED = 2000
# No PUBACK for this long while messages are outstanding means the broker is gone.
ACK_TIMEOUT_S = 60.0
WILL_WORKERS = 4


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is, from ``mqtt://[USER[:PASS]@]HOST[:PORT]``."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse the ``--broker`` value or raise BrokerError saying what a good one looks like."""
    parts = urlsplit(url)
    hint = "use mqtt://HOST:PORT, e.g. mqtt://127.0.0.1:1883"
    if parts.scheme != "mqtt":
        raise BrokerError(f"--broker {url!r}: scheme {parts.scheme!r} is not supported; {hint}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise BrokerError(f"--broker {url!r}: the port is not a number 1-65535; {hint}") from None
    if not parts.hostname or parts.path not in ("", "/"):
        raise BrokerError(f"--broker {url!r}: needs a host and nothing after the port; {hint}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return BrokerAddress(parts.hostname, port, user, password)


class Transport(Protocol):
    """What the publisher needs from an MQTT client."""

    published: int  # messages handed over so far
    acked: int  # of those, acknowledged by the broker (in order)

    def connect(self) -> None: ...
    def publish(self, topic: str, payload: bytes, retain: bool) -> None: ...
    def idle(self, seconds: float) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class PahoClient:
    """QoS 1 through paho-mqtt 2.x, its network loop driven from the publishing thread.

    ``loop_start()``'s thread is not used: with it every publish wakes that thread through a
    socket pair, and the hand-over halves the throughput again.
    """

    def __init__(
        self,
        addr: BrokerAddress,
        client_id: str,
        max_unacked: int = MAX_UNACKED,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self.addr = addr
        self.ack_timeout_s = ack_timeout_s
        self._max_unacked = max_unacked
        self._unacked = 0
        self._since_pump = 0
        self._last_progress = time.monotonic()
        self._connected = False
        self._refused: str | None = None
        self.published = 0
        self.acked = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if addr.username is not None:
            self._client.username_pw_set(addr.username, addr.password)
        self._client.max_inflight_messages_set(max_unacked)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    # paho callbacks run inside loop(), i.e. on the publishing thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = f"[code:{reason_code.value}] {reason_code}"
        else:
            self._connected = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False
        if reason_code.is_failure:
            log.warning("lost the broker at %s (%s); reconnecting", self.addr.url, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._unacked -= 1
        self.acked += 1
        self._last_progress = time.monotonic()

    def connect(self, timeout_s: float = 10.0) -> None:
        try:
            self._client.connect(self.addr.host, self.addr.port, keepalive=60)
        except (OSError, ValueError) as exc:
            raise BrokerError(
                f"cannot connect to the broker at {self.addr.url}: {exc}; is it running? "
                "(give it with --broker mqtt://HOST:PORT)"
            ) from exc
        deadline = time.monotonic() + timeout_s
        while not self._connected and self._refused is None:
            if time.monotonic() > deadline:
                raise BrokerError(f"no CONNACK from {self.addr.url} within {timeout_s:g} s")
            self._client.loop(0.1)
        if self._refused is not None:
            raise BrokerError(
                f"the broker at {self.addr.url} refused the connection: {self._refused}"
            )
        self._last_progress = time.monotonic()

    def _pump(self, timeout: float) -> None:
        """Run paho's loop once: read PUBACKs, send what is queued, reconnect when lost."""
        rc = self._client.loop(timeout)
        if rc == mqtt.MQTT_ERR_SUCCESS:
            return
        stalled = time.monotonic() - self._last_progress
        if stalled > self.ack_timeout_s:
            raise BrokerError(
                f"lost the broker at {self.addr.url} for {stalled:.0f} s "
                f"({mqtt.error_string(rc)}) with {self._unacked} messages unacknowledged"
            )
        time.sleep(min(1.0, timeout + 0.2))
        try:
            # paho resends the unacknowledged QoS 1 messages after reconnecting
            self._client.reconnect()
        except OSError as exc:
            log.debug("reconnect to %s failed: %s", self.addr.url, exc)

    def _wait_below(self, limit: int) -> None:
        while self._unacked > limit:
            self._pump(0.05)
            stalled = time.monotonic() - self._last_progress
            if self._unacked > limit and stalled > self.ack_timeout_s:
                raise BrokerError(
                    f"the broker at {self.addr.url} acknowledged nothing for "
                    f"{stalled:.0f} s with {self._unacked} messages outstanding"
                )

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if self._unacked == 0:
            self._last_progress = time.monotonic()
        self._unacked += 1
        self.published += 1
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        # NO_CONN: paho keeps QoS 1 messages and sends them when it has reconnected
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self._since_pump += 1
        if self._since_pump >= 64 or not self._connected:
            self._since_pump = 0
            self._pump(0)
        if self._unacked >= self._max_unacked:
            self._wait_below(self._max_unacked // 2)

    def idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._pump(min(left, 1.0))

    def flush(self) -> None:
        self._wait_below(0)

    def close(self) -> None:
        if self._connected:
            self._client.disconnect()
            self._client.loop(0.1)


CLIENTS = ("wire", "paho")


class Publisher:
    """One publishing connection plus the per-crash will connections, in device order."""

    def __init__(
        self,
        addr: BrokerAddress,
        client_id: str,
        client: str = "wire",
        will_workers: int = WILL_WORKERS,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self.addr = addr
        self.ack_timeout_s = ack_timeout_s
        self.transport: Transport
        if client == "wire":
            self.transport = WireClient(
                addr.host,
                addr.port,
                client_id,
                addr.username,
                addr.password,
                ack_timeout_s=ack_timeout_s,
            )
        elif client == "paho":
            self.transport = PahoClient(addr, client_id, ack_timeout_s=ack_timeout_s)
        else:
            raise BrokerError(f"--client {client!r}: use one of {', '.join(CLIENTS)}")
        self._wills = ThreadPoolExecutor(will_workers, thread_name_prefix="sim-will")
        self._pending_will: dict[str, Future[None]] = {}
        # devices whose latest status is a will: (topic, payload) the broker must end up with
        self._last_will: dict[str, tuple[str, bytes]] = {}
        self.wills_sent = 0

    def connect(self) -> None:
        self.transport.connect()

    def publish(self, topic: str, payload: bytes, retain: bool, device_id: str) -> None:
        """Publish at QoS 1 on the shared connection."""
        pending = self._pending_will.pop(device_id, None)
        if pending is not None:
            # the device's previous life must have ended (its will sent) before it speaks again
            self._wait(pending)
        if retain:
            self._last_will.pop(device_id, None)
        self.transport.publish(topic, payload, retain)

    def will(
        self, topic: str, payload: bytes, device_id: str, client_id: str, last: bool = False
    ) -> None:
        """Have the broker publish ``payload`` as the will of a connection that dies.

        A ``last`` will (the device stays down to the end) must not overtake the device's
        earlier messages still in the pipeline, or the broker would keep a stale retained
        ``online``: its connection waits until everything published so far is acknowledged.
        Other wills do not wait (that would stall the pipeline at every crash); one may reach
        the broker before the device's preceding messages, which changes nothing for a
        consumer that orders by event time, and the device's next ``online`` fixes the
        retained status.
        """
        previous = self._pending_will.pop(device_id, None)
        if previous is not None:
            self._wait(previous)
        after = self.transport.published if last else 0
        self._pending_will[device_id] = self._wills.submit(
            self._send_will, client_id, topic, payload, after
        )
        self._last_will[device_id] = (topic, payload)
        self.wills_sent += 1

    def _wait(self, fut: Future[None]) -> None:
        # keep reading PUBACKs meanwhile: the will's thread waits for them
        while not fut.done():
            self.transport.idle(0.002)
        fut.result()

    def _send_will(self, client_id: str, topic: str, payload: bytes, after: int) -> None:
        deadline = time.monotonic() + self.ack_timeout_s
        while self.transport.acked < after:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the broker at {self.addr.url} did not acknowledge the messages before "
                    f"a will within {self.ack_timeout_s:g} s"
                )
            time.sleep(0.001)
        # a broker restart must not lose a crash: retry connecting like the main connection
        a, delay = self.addr, 0.2
        while True:
            try:
                send_will(a.host, a.port, client_id, topic, payload, a.username, a.password)
                return
            except BrokerError as exc:
                if not isinstance(exc.__cause__, OSError) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    def idle(self, seconds: float) -> None:
        self.transport.idle(seconds)

    def flush(self) -> None:
        """Wait until every will went out and every message was acknowledged."""
        self.transport.flush()
        for fut in list(self._pending_will.values()):
            fut.result()
        self._pending_will.clear()
        if self._last_will:
            # a will is published when the broker gets round to the reset socket; make sure
            # it has before saying "done", or a consumer flushed right after could miss it
            confirm_retained(self.addr, dict(self._last_will.values()), self.ack_timeout_s)

    def close(self) -> None:
        self._wills.shutdown(wait=True, cancel_futures=True)
        self.transport.close()


def confirm_retained(addr: BrokerAddress, expected: dict[str, bytes], timeout_s: float) -> None:
    """Wait until the broker holds ``expected`` (topic -> payload) as its retained messages."""
    missing = dict(expected)
    done = threading.Event()
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        # the retained copy at subscribe time, or the will itself if it comes just after
        with lock:
            if missing.get(msg.topic) == msg.payload:
                del missing[msg.topic]
                if not missing:
                    done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"fleetpulse-sim-check-{os.getpid()}"
    )
    if addr.username is not None:
        client.username_pw_set(addr.username, addr.password)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in sorted(expected)])
    try:
        client.connect(addr.host, addr.port, keepalive=30)
    except OSError as exc:
        raise BrokerError(f"cannot connect to {addr.url} to check the wills: {exc}") from exc
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise BrokerError(
                f"the broker at {addr.url} did not publish {len(missing)} will(s) within "
                f"{timeout_s:g} s, e.g. on {next(iter(missing))}"
            )
    finally:
        client.disconnect()
        client.loop_stop()


def pace(
    speed: float | None, start_ms: int, sleep: Callable[[float], None] = time.sleep
) -> Callable[[int], None]:
    """A function that waits until simulated time ``ms`` is due at ``speed`` times real time."""
    if speed is None:
        return lambda ms: None
    wall0 = time.monotonic()

    def wait(ms: int) -> None:
        due = wall0 + (ms - start_ms) / 1000 / speed
        delay = due - time.monotonic()
        if delay > 0.001:
            sleep(delay)

    return wait
