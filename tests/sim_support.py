"""Helpers for the simulator tests: a QoS 1 subscriber that counts and decodes what it hears."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from schemas import InvalidMessage, Reading, decode, parse_topic
from schemas.topics import TopicError


@dataclass
class Heard:
    """What the subscriber received: counts per topic kind, decoded readings, failures."""

    by_kind: Counter[str] = field(default_factory=Counter)
    readings: list[Reading] = field(default_factory=list)
    invalid: list[tuple[str, bytes, str]] = field(default_factory=list)
    total: int = 0


class Subscriber:
    """Connects before the simulator starts and subscribes ``fleet/#`` at QoS 1."""

    def __init__(self, port: int, topic: str = "fleet/#") -> None:
        self.heard = Heard()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-test-sub")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("subscriber got no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received = int(time.time() * 1000)
        with self._lock:
            h = self.heard
            h.total += 1
            try:
                h.readings.append(decode(msg.topic, msg.payload, received))
                h.by_kind[parse_topic(msg.topic).kind] += 1
            except (InvalidMessage, TopicError) as exc:
                h.by_kind["malformed"] += 1
                h.invalid.append((msg.topic, msg.payload, str(exc)))

    def wait_for(self, total: int, timeout: float = 60.0) -> Heard:
        """Wait until ``total`` messages arrived (or the time is up), then a little more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.heard.total < total:
            time.sleep(0.05)
        time.sleep(0.3)  # anything beyond the expected count would show up now
        return self.heard

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def batch_rows(readings: list[Reading], gateway_of_site: dict[str, str]) -> dict[str, list[object]]:
    """Reading rows in schemas.batch.BATCH_SCHEMA column names (as if each site's gateway
    had received them), for feeding a KPI implementation without MQTT."""
    names = ["record_type", "gateway_id", "device_id", "site", "kind", "ts", "seq"]
    names += ["received_at", "end_ts", "state", "event_type"]
    cols: dict[str, list[object]] = {k: [] for k in names}
    for r in readings:
        values = ("reading", gateway_of_site[r.site], r.device_id, r.site, r.kind, r.ts_ms, r.seq)
        values += (r.received_ms, None, r.state, r.event_type)
        for k, v in zip(cols, values, strict=True):
            cols[k].append(v)
    return cols
