"""MQTT → SQLite: the paho client of the persistent session, commit batching, ordered acks.

A message's PUBACK goes out only after the COMMIT that made its row durable, and acks leave
in the order messages arrived. Bad messages are quarantined and acknowledged like good ones;
an unexpected failure while decoding one message quarantines that message, never the loop.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from schemas import InvalidMessage, Reading, decode

from .buffer import Buffer, Quarantined
from .config import AgentConfig, read_password
from .errors import ConfigError
from .faults import fault_point
from .mqttio import BufferedClient

log = logging.getLogger(__name__)

Decoder = Callable[[str, bytes, int], Reading]
AckFn = Callable[[int, int], Any]


class Batcher:
    """Collects decoded messages and commits them as one transaction, then acks in order.

    Pure bookkeeping around ``Buffer.write``: the caller feeds messages with ``add``, asks
    ``due`` with its monotonic time, and calls ``flush`` with the ack function of the
    connection the messages came on (None when that connection is gone: the rows are still
    committed and the broker's redelivery is dropped by the dedup key).
    """

    def __init__(
        self,
        buffer: Buffer,
        batch_max: int,
        batch_interval_s: float,
        clock_ms: Callable[[], int],
        decoder: Decoder = decode,
        on_acked: Callable[[Sequence[Reading], Sequence[tuple[int, int]]], None] | None = None,
    ) -> None:
        self.buffer = buffer
        self.batch_max = batch_max
        self.batch_interval_s = batch_interval_s
        self._clock_ms = clock_ms
        self._decode = decoder
        self._on_acked = on_acked
        self._readings: list[Reading] = []
        self._quarantined: list[Quarantined] = []
        self._acks: list[tuple[int, int]] = []
        self._count = 0
        self.first_at: float | None = None
        # Counters for status and logs.
        self.received = 0
        self.stored = 0
        self.duplicates = 0
        self.quarantined = 0
        self.commits = 0
        # after each COMMIT: rows written (the disk budget's counter, agent/disk.py)
        self.on_commit: Callable[[int], None] | None = None

    @property
    def pending(self) -> int:
        """Messages received but not yet committed."""
        return self._count

    def add(self, topic: str, payload: bytes, mid: int, qos: int, now: float) -> None:
        """Decode one message into the open batch. Never raises."""
        received_ms = self._clock_ms()
        try:
            self._readings.append(self._decode(topic, payload, received_ms))
        except InvalidMessage as exc:
            self._quarantined.append(Quarantined.of(received_ms, topic, payload, exc.reason))
        except Exception as exc:  # one odd message must not stop ingest
            log.exception("decoding a message on %r failed; quarantining it", topic)
            reason = f"internal error while decoding: {type(exc).__name__}: {exc}"
            self._quarantined.append(Quarantined.of(received_ms, topic, payload, reason[:512]))
        if qos > 0:
            self._acks.append((mid, qos))
        if self._count == 0:
            self.first_at = now
        self._count += 1
        self.received += 1

    def due(self, now: float) -> bool:
        """True when the batch is full or its oldest message has waited long enough."""
        if self._count == 0:
            return False
        if self._count >= self.batch_max:
            return True
        assert self.first_at is not None
        return now - self.first_at >= self.batch_interval_s

    def seconds_until_due(self, now: float, idle: float) -> float:
        """How long the network loop may block before the next flush is due."""
        if self._count == 0 or self.first_at is None:
            return idle
        return max(0.0, min(idle, self.first_at + self.batch_interval_s - now))

    def flush(self, ack: AckFn | None, alive: tuple[int, int] | None = None) -> int:
        """COMMIT the batch, then ack its messages in arrival order; messages committed.

        On a StoreError nothing is acked and the batch stays pending for the next try: the
        broker keeps the messages in flight meanwhile, so nothing is lost.
        """
        if self._count == 0 and alive is None:
            return 0
        inserted = self.buffer.write(self._readings, self._quarantined, alive)
        count = self._count
        self.commits += 1
        self.stored += inserted
        self.duplicates += len(self._readings) - inserted
        self.quarantined += len(self._quarantined)
        if self.on_commit is not None:
            self.on_commit(inserted + len(self._quarantined))
        acks, readings = self._acks, self._readings
        self._readings, self._quarantined, self._acks = [], [], []
        self._count = 0
        self.first_at = None
        fault_point("after_commit_before_ack")
        if ack is not None:
            for mid, qos in acks:
                ack(mid, qos)
            if self._on_acked is not None and acks:
                try:
                    self._on_acked(readings, acks)
                except Exception:  # an observer must not break ingest
                    log.exception("on_acked observer failed")
        elif acks:
            log.info(
                "committed %d messages after the connection dropped; the broker redelivers "
                "them and the dedup key stores them once",
                len(acks),
            )
        return count


# CONNACK reason codes a retry cannot fix: stop and tell the operator.
FATAL_CONNACK = {
    0x84: "unsupported protocol version: set [mqtt] protocol = 'mqttv311'",
    0x85: "client identifier not valid: set [mqtt] client_id",
    0x86: "bad user name or password: check [mqtt] username and password_file",
    0x87: "not authorized: check [mqtt] username and password_file, and the broker's "
    "allow_anonymous / ACL settings for this client",
    0x8C: "bad authentication method",
}


def make_client(cfg: AgentConfig) -> BufferedClient:
    """A paho client for the agent's persistent session; nothing is connected yet."""
    m = cfg.mqtt
    v5 = m.protocol == "mqttv5"
    client = BufferedClient(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        # 3.1.1: the broker keeps our subscriptions and queues QoS 1 while we are away.
        clean_session=None if v5 else False,
        manual_ack=True,
    )
    # A raising callback is logged and the network loop goes on (our callbacks catch
    # their own errors too; this is the second guard).
    client.suppress_exceptions = True
    if m.username is not None:
        client.username_pw_set(m.username, read_password(cfg))
    if m.tls_ca is not None:
        try:
            client.tls_set(
                ca_certs=str(m.tls_ca),
                certfile=None if m.tls_cert is None else str(m.tls_cert),
                keyfile=None if m.tls_key is None else str(m.tls_key),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"[mqtt] tls_ca/tls_cert/tls_key cannot be loaded: {exc}") from exc
    connect_props = None
    if v5:
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = m.session_expiry_s
        # The broker sends at most this many unacked QoS 1 messages; a batch must fit.
        connect_props.ReceiveMaximum = m.receive_maximum
    client.connect_async(
        m.host,
        m.port,
        keepalive=m.keepalive_s,
        clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=connect_props,
    )
    return client


def subscriptions(cfg: AgentConfig) -> list[tuple[str, Any]]:
    """The topic filters with QoS 1 in the form ``client.subscribe`` takes."""
    if cfg.mqtt.protocol == "mqttv5":
        from paho.mqtt.subscribeoptions import SubscribeOptions

        return [(t, SubscribeOptions(qos=1)) for t in cfg.mqtt.topics]
    return [(t, 1) for t in cfg.mqtt.topics]
