"""Demo wall time by stage: ``fleetpulse demo`` at its default size, as a user runs it.

Runs the CLI in a subprocess (private Mosquitto, central API, three agents, simulator,
flush, consolidation, report) and reads the stage timings and accuracy it records in
``DIR/demo.json``. ``python -m bench demo``; ``FP_BENCH_DEMO_DEVICES`` and
``FP_BENCH_DEMO_DAYS`` change the fleet (default: the demo's own default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def run() -> str:
    args = []
    if os.environ.get("FP_BENCH_DEMO_DEVICES"):
        args += ["--devices", os.environ["FP_BENCH_DEMO_DEVICES"]]
    if os.environ.get("FP_BENCH_DEMO_DAYS"):
        args += ["--days", os.environ["FP_BENCH_DEMO_DAYS"]]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fp-bench-demo-") as tmp:
        out = Path(tmp) / "demo"
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "fleetpulse", "demo", "--out", str(out), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        wall = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(f"fleetpulse demo failed:\n{done.stdout[-2000:]}{done.stderr}")
        fig = json.loads((out / "demo.json").read_text())
    t = fig["timings_s"]
    a = fig["accuracy"]
    rows = "\n".join(f"| {stage} | {secs:.1f} |" for stage, secs in t.items())
    published = fig["published"]
    msg_stage = t.get("publish", 0) + t.get("drain", 0)
    fleet = ", ".join(f"{d} {e:+.3f}" for d, e in a["fleet_day_error_pts"].items())
    return f"""## Demo wall time by stage

`fleetpulse demo` (scenario `firmware-regression`, seed 42): {fig["devices"]} devices x \
{fig["days"]} days, {published:,} messages through a private Mosquitto to three agents, \
uploaded to the central API, consolidated on DuckDB, reported. Load average at start \
{load:.1f} on {psutil.cpu_count()} cores (a shared machine: other work competes for the CPU).

| stage | seconds |
|---|---:|
{rows}
| **total (stages)** | **{fig["total_s"]:.1f}** |
| process wall time (interpreter start included) | {wall:.1f} |

Messages published and drained by the agents: {published / msg_stage:,.0f} msg/s over \
publish + drain ({msg_stage:.1f} s; the agents ingest while the simulator publishes).

Accuracy of that run against the simulator's truth: device-day uptime mean absolute error \
**{a["device_day_mae_pts"]:.3f} points** (largest {a["device_day_max_pts"]:.3f}); fleet-day \
errors {fleet} points (worst {a["fleet_day_max_pts"]:.3f}); lowest firmware in \
`firmware_day`: {a["lowest_firmware"]} (faulty: {a["faulty_firmware"]}).
"""
