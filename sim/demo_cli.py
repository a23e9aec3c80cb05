"""``fleetpulse demo`` (interim): a private Mosquitto, the agent, a few messages, its status.

The full end-to-end demo (simulated fleet → agent → upload → consolidation → report) comes
with a later issue; this one shows what exists today: durable ingest with dedup and
quarantine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FOLLOW_UP = (
    "This is the interim demo of issue 2 (durable MQTT ingest). The full demo — a simulated "
    "fleet, upload to central, consolidation and the uptime report — comes with a later issue."
)


class DemoError(Exception):
    """The demo could not run; the message says what to install or fix."""


def register(subs: Any, name: str, help_text: str) -> None:
    """Add ``fleetpulse demo`` to the top-level parser."""
    p = subs.add_parser(
        name,
        help=help_text,
        description="Interim demo: start a private Mosquitto and the agent, publish a few "
        "messages (a duplicate and a bad one among them), show `agent status`. " + FOLLOW_UP,
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        help="folder for the demo's files; its agent-ingest/ subfolder is recreated "
        "(default: demo-out)",
    )
    p.set_defaults(handler=cmd_demo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, pred: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def _mosquitto(workdir: Path) -> Iterator[int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise DemoError("needs the mosquitto broker: sudo apt-get install mosquitto")
    port = _free_port()
    data = workdir / "mosquitto-data"
    data.mkdir(parents=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {data}/\nmax_queued_messages 100000\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        # as root mosquitto would drop to a user that cannot write here
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait("mosquitto to listen", lambda: _port_open(port) or proc.poll() is not None, 10)
        if proc.poll() is not None:
            raise DemoError(f"mosquitto exited at start; see {workdir / 'mosquitto.log'}")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _subscribed(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return bool(conn.execute("SELECT 1 FROM observations WHERE end_ms IS NULL").fetchone())
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def _messages(now_ms: int) -> list[tuple[str, bytes, str]]:
    """(topic, payload, what it shows) for the demo's publishes."""

    def tele(dev: str, seq: int, temp: float) -> bytes:
        body = {"device_id": dev, "ts": now_ms - (10 - seq) * 30_000, "seq": seq,
                "metrics": {"temp_c": temp}, "fw": "2.4.1"}  # fmt: skip
        return json.dumps(body).encode()

    out = [(f"fleet/berlin/pump-{d}/telemetry", tele(f"pump-{d}", s, 20 + s), "telemetry")
           for d in (1, 2) for s in range(1, 5)]  # fmt: skip
    out.append(("fleet/berlin/pump-1/status",
                json.dumps({"device_id": "pump-1", "ts": now_ms, "state": "online"}).encode(),
                "status"))  # fmt: skip
    boot = {"device_id": "pump-1", "ts": now_ms, "seq": 5, "type": "boot"}
    out.append(("fleet/berlin/pump-1/event", json.dumps(boot).encode(), "event"))
    out.append((out[0][0], out[0][1], "the first telemetry again (a redelivery): stored once"))
    out.append(("fleet/berlin/pump-2/telemetry", b"temp=21.5", "not JSON: quarantined"))
    out.append(("fleet/berlin/pump-2/telemetry",
                json.dumps({"device_id": "pump-9", "ts": now_ms, "seq": 1}).encode(),
                "device_id differs from the topic: quarantined"))  # fmt: skip
    return out


def _publish(port: int, messages: list[tuple[str, bytes, str]]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="demo-device")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload, what in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
            print(f"  published {topic:<32} {what}")
    finally:
        client.disconnect()
        client.loop_stop()


def _fleetpulse(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetpulse", *args]


def run_demo(out: Path) -> None:
    work = out / "agent-ingest"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with _mosquitto(work) as port:
        cfg = work / "agent.toml"
        cfg.write_text(
            f'gateway_id = "gw-demo"\ndata_dir = "{(work / "agent-data").resolve()}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        )
        db = work / "agent-data" / "agent.sqlite3"
        log_path = work / "agent.log"
        print(f"mosquitto on 127.0.0.1:{port}; agent config {cfg}; agent log {log_path}")
        with open(log_path, "wb") as log:
            agent = subprocess.Popen(
                _fleetpulse("agent", "run", "--config", str(cfg)), stdout=log, stderr=log
            )
        try:
            _wait("the agent to subscribe", lambda: _subscribed(db) or agent.poll() is not None, 30)
            if agent.poll() is not None:
                raise DemoError(f"the agent exited; see {log_path}")
            print("publishing with QoS 1:")
            messages = _messages(time.time_ns() // 1_000_000)
            _publish(port, messages)
            print(
                f"expected: {len(messages)} published = {len(messages) - 3} distinct readings "
                "+ 1 redelivery (not stored twice) + 2 quarantined"
            )
            time.sleep(0.5)  # a couple of 50 ms commit windows
            print("\n$ fleetpulse agent status --config " + str(cfg))
            subprocess.run(_fleetpulse("agent", "status", "--config", str(cfg)), check=False)
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(30)
        print(f"\nagent stopped with SIGTERM, exit code {code}; its buffer stays in {db}")
        print("look inside: sqlite3 " + str(db) + " 'select topic, reason from quarantine'")
    print("\n" + FOLLOW_UP)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        run_demo(args.out)
    except DemoError as exc:
        print(f"fleetpulse demo: {exc}", file=sys.stderr)
        return 1
    return 0
