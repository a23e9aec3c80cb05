"""Simulator publish rate: generation alone, then QoS 1 publishing to a private Mosquitto.

Four runs of the ``firmware-regression`` scenario (seed 42): message generation with no
broker (``--dry-run``); the pipelined ``wire`` client with no subscriber; the same with a
QoS 1 ``mosquitto_sub`` draining every message (what a demo looks like, minus the agents);
and the ``paho`` client, on a smaller fleet because it is several times slower. Each rate
counts the messages published over the wall time of the publishing loop (planning and file
writing excluded), waiting for every PUBACK. ``python -m bench sim``;
``FP_BENCH_SIM_DEVICES`` and ``FP_BENCH_SIM_DAYS`` change the fleet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim import SimResult, prepare, publish_plan  # noqa: E402
from tests.brokers import Broker  # noqa: E402

DEVICES = int(os.environ.get("FP_BENCH_SIM_DEVICES", "60"))
DAYS = int(os.environ.get("FP_BENCH_SIM_DAYS", "1"))
PAHO_DEVICES = max(1, DEVICES // 3)


def _run(tmp: Path, label: str, devices: int, broker: Broker | None, client: str) -> SimResult:
    plan = prepare("firmware-regression", tmp / label, devices=devices, days=DAYS, seed=42)
    return publish_plan(plan, broker.url if broker else None, client=client)


def _subscriber(port: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        return None
    return subprocess.Popen(
        [exe, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", "fleet/#", "-i", "bench-sub"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run() -> str:
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fp-bench-sim-") as d:
        tmp = Path(d)
        dry = _run(tmp, "dry", DEVICES, None, "wire")
        rows.append(("generation only (`--dry-run`)", DEVICES, dry))
        broker = Broker(tmp / "broker").start()
        try:
            rows.append(("wire, no subscriber", DEVICES, _run(tmp, "w", DEVICES, broker, "wire")))
            sub = _subscriber(broker.port)
            try:
                label = "wire, QoS 1 `mosquitto_sub` draining"
                if sub is None:
                    label += " (mosquitto_sub missing: no subscriber)"
                rows.append((label, DEVICES, _run(tmp, "ws", DEVICES, broker, "wire")))
            finally:
                if sub is not None:
                    sub.terminate()
                    sub.wait(10)
            rows.append(
                ("paho, no subscriber", PAHO_DEVICES, _run(tmp, "p", PAHO_DEVICES, broker, "paho"))
            )
        finally:
            broker.kill()
    per_dd = dry.messages_per_device_day
    lines = [
        "## Simulator publish rate",
        "",
        f"`fleetpulse sim`, scenario `firmware-regression`, seed 42, {DAYS} simulated day(s); "
        f"QoS 1 to a private Mosquitto on 127.0.0.1, every PUBACK awaited. "
        f"Load average at start {load:.1f} on {psutil.cpu_count()} cores (a shared machine: "
        "other work competes for the CPU).",
        "",
        "| run | devices | messages | seconds | messages/s | device-days/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, devices, r in rows:
        dd_rate = r.published / per_dd / r.elapsed_s if r.elapsed_s and per_dd else 0.0
        lines.append(
            f"| {label} | {devices} | {r.published:,} | {r.elapsed_s:.1f} | {r.rate:,.0f} "
            f"| {dd_rate:.1f} |"
        )
    lines += [
        "",
        f"Messages per device-day: **{per_dd:,.0f}** with this scenario's heartbeat mix "
        "(80 % 30 s, 10 % 10 s, 10 % 60 s; telemetry is 98 % of it). Sizing: "
        "devices x days x that figure / messages/s = seconds of publishing.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
