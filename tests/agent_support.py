"""Helpers for the agent tests: configs, the agent as a subprocess, a QoS 1 publisher, DB reads."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
Key = tuple[int, str, str, int]
Message = tuple[str, bytes]


def write_config(tmp: Path, port: int, extra: str = "", **top: str) -> Path:
    """An agent TOML in ``tmp`` pointing at 127.0.0.1:``port``; returns its path."""
    lines = [f'gateway_id = "{top.pop("gateway_id", "gw-test")}"', f'data_dir = "{tmp / "data"}"']
    lines += [f"{k} = {v}" for k, v in top.items()]
    lines += ["[mqtt]", 'host = "127.0.0.1"', f"port = {port}", extra]
    path = tmp / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def config_of(path: Path) -> AgentConfig:
    return load_config(path, environ={})


def telemetry(device: str, seq: int, ts_ms: int, site: str = "site-a") -> Message:
    """One valid telemetry message: (topic, payload)."""
    body = {"device_id": device, "ts": ts_ms, "seq": seq, "metrics": {"temp": 20.0 + seq % 7}}
    return f"fleet/{site}/{device}/telemetry", json.dumps(body).encode()


def fleet_messages(n: int, devices: int = 50, t0: int = 1_767_225_600_000) -> list[Message]:
    """``n`` distinct telemetry messages spread over ``devices`` devices, 30 s apart each."""
    return [telemetry(f"dev-{i % devices:03d}", i // devices, t0 + (i // devices) * 30_000)
            for i in range(n)]  # fmt: skip


def key_of(message: Message) -> Key:
    """The dedup key (time first) of a valid message, computed from the test's side."""
    topic, payload = message
    body = json.loads(payload)
    return (body["ts"], body["device_id"], topic.split("/")[3], body.get("seq", -1))


class AgentProcess:
    """``python -m fleetpulse agent run --config PATH`` as a child we can SIGKILL."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> AgentProcess:
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.log, "ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetpulse", "agent", "run", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to commit, ack or close anything."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_for(what: str, pred: Callable[[], bool], timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = ro(db)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # schema not created yet
    finally:
        conn.close()


def count(db: Path, table: str = "readings") -> int:
    rows = query(db, f"SELECT count(*) FROM {table}")
    return int(rows[0][0]) if rows else 0


def stored_keys(db: Path) -> list[Key]:
    """Every stored reading's key, duplicates kept (there must be none)."""
    return [tuple(r) for r in query(db, "SELECT ts_ms, device_id, kind, seq FROM readings")]  # type: ignore[misc]


def subscribed(db: Path) -> bool:
    return bool(query(db, "SELECT 1 FROM observations WHERE end_ms IS NULL"))


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


class Publisher:
    """A QoS 1 publisher with its own persistent session that waits for every PUBACK.

    paho keeps unacknowledged QoS 1 messages and resends them after a reconnect, so a
    broker restart mid-stream loses nothing on this side.
    """

    def __init__(self, port: int, client_id: str = "test-publisher", inflight: int = 200) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        # PUBACKs by mid: a message published while disconnected keeps rc NO_CONN in its
        # MQTTMessageInfo even after paho resent it and the broker acknowledged it.
        self.acked: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, p: self.acked.add(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise AssertionError("publisher could not connect")
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, messages: Iterable[Message], rate: float | None = None) -> None:
        """Queue each message with QoS 1, paced to ``rate`` messages/s if given."""
        started = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            self.infos.append(self.client.publish(topic, payload, qos=1))
            if rate and i % 50 == 49:
                ahead = started + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def wait_all(self, timeout: float = 120) -> None:
        """Block until the broker acknowledged every message published so far."""
        assert len(self.infos) < 65535, "mids repeat past 65535: use one publisher per batch"
        wanted = {info.mid for info in self.infos}
        deadline = time.monotonic() + timeout
        while not wanted <= self.acked:
            if time.monotonic() > deadline:
                done = len(wanted & self.acked)
                raise AssertionError(f"only {done}/{len(wanted)} PUBACKs after {timeout} s")
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(port: int, messages: Sequence[Message], timeout: float = 120) -> None:
    """Publish and wait for every PUBACK, then disconnect."""
    pub = Publisher(port, client_id=f"pub-{os.getpid()}-{time.monotonic_ns()}")
    try:
        pub.publish(messages)
        pub.wait_all(timeout)
    finally:
        pub.close()


def mosquitto_pub(port: int, topic: str, payload: bytes) -> None:
    """One message through the ``mosquitto_pub`` binary, QoS 1."""
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-s"],
        input=payload,
        check=True,
        timeout=30,
        capture_output=True,
    )
