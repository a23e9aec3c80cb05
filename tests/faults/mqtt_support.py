"""MQTT helpers of the fault suite: shipped broker settings, a timed publisher, an agent thread."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.service import Service
from schemas import Reading
from tests.agent_support import Key, Message, config_of
from tests.brokers import Broker
from tests.faults.figures_support import ROOT

SHIPPED_CONF = ROOT / "deploy" / "mosquitto" / "fleetpulse.conf"
# What decides broker-side loss and queueing; TLS, passwords and ACLs are S1's business.
PERSISTENCE_KEYS = (
    "autosave_interval",
    "autosave_on_changes",
    "max_queued_messages",
    "max_queued_bytes",
    "max_inflight_messages",
    "persistent_client_expiration",
)


def shipped_settings(conf: Path = SHIPPED_CONF) -> dict[str, str]:
    """The persistence and queue settings of the gateway's shipped Mosquitto config."""
    found: dict[str, str] = {}
    for line in conf.read_text().splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) == 2 and parts[0] in PERSISTENCE_KEYS:
            found[parts[0]] = parts[1]
    missing = set(PERSISTENCE_KEYS) - set(found)
    assert not missing, f"{conf} no longer sets {sorted(missing)}"
    return found


def shipped_broker(workdir: Path) -> tuple[Broker, dict[str, str]]:
    """The test broker (loopback, persistence) with the shipped persistence settings."""
    broker = Broker(workdir)
    settings = shipped_settings()
    text = broker.conf.read_text()
    text = "\n".join(
        line for line in text.splitlines() if line.split(" ", 1)[0] not in PERSISTENCE_KEYS
    )
    text += "\n" + "".join(f"{k} {v}\n" for k, v in settings.items())
    broker.conf.write_text(text)
    return broker.start(), settings


class TimedPublisher:
    """A QoS 1 publisher that remembers when the broker acknowledged each message (by index).

    paho's mids wrap at 65,535; a mid is only reused long after its PUBACK, so the latest
    index published under a mid is the one its PUBACK belongs to.
    """

    def __init__(self, port: int, client_id: str, inflight: int = 200) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # floats work
        self._lock = threading.Lock()
        self._index_of_mid: dict[int, int] = {}
        self._early: dict[int, float] = {}
        self.acked_at: dict[int, float] = {}  # message index -> monotonic time of its PUBACK
        self.sent = 0
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise AssertionError("publisher could not connect")

    def _on_publish(self, c: object, u: object, mid: int, rc: object, p: object) -> None:
        now = time.monotonic()
        with self._lock:
            index = self._index_of_mid.get(mid)
            if index is not None and index not in self.acked_at:
                self.acked_at[index] = now
            else:  # PUBACK before publish() returned (or a reused mid not yet mapped)
                self._early[mid] = now

    def publish(self, messages: Sequence[Message], rate: float) -> None:
        """Publish every message with QoS 1, paced to ``rate`` messages/s."""
        started = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            # Not under our lock: paho calls on_publish holding its own message lock, which
            # publish() also takes (holding ours around it deadlocks).
            info = self.client.publish(topic, payload, qos=1)
            with self._lock:
                self._index_of_mid[info.mid] = self.sent
                early = self._early.pop(info.mid, None)
                if early is not None:
                    self.acked_at[self.sent] = early
                self.sent += 1
            if i % 50 == 49:
                ahead = started + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked_at) < self.sent:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.acked_at)}/{self.sent} PUBACKs after {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentThread:
    """The agent's real Service on a thread, with the key of every message it acknowledged."""

    def __init__(self, cfg_path: Path) -> None:
        self.accepted: list[Key] = []
        self.error: BaseException | None = None
        self.service = Service(config_of(cfg_path), on_acked=self._acked)
        self.thread = threading.Thread(target=self._run, name="agent", daemon=True)

    def _acked(self, readings: Sequence[Reading], acks: Sequence[tuple[int, int]]) -> None:
        self.accepted.extend(r.key for r in readings)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> AgentThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the agent did not stop within 60 s"
        if self.error is not None:
            raise self.error


def settle(count_fn: object, quiet_s: float = 2.0, timeout: float = 120.0) -> int:
    """Wait until ``count_fn()`` stops growing for ``quiet_s``; the final count."""
    assert callable(count_fn)
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = int(count_fn())
        if now_count != last:
            last, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return last
        time.sleep(0.1)
    raise AssertionError(f"still growing after {timeout} s (at {last})")


_DURATION_RE = re.compile(r"^(\d+)([smhdwy]?)$")


def seconds(value: str) -> int:
    """A Mosquitto duration (``30``, ``14d``) in seconds."""
    match = _DURATION_RE.match(value)
    assert match, value
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(match.group(1)) * unit[match.group(2)]
