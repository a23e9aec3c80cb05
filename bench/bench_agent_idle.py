"""Agent resident memory and CPU when idle and under a gateway's everyday trickle.

The real ``fleetpulse agent run`` against a private Mosquitto, as systemd runs it: a
``$NOTIFY_SOCKET`` we listen on (start-up is timed to its READY=1) and a 60 s watchdog
(it pets at half that). Phase 1: connected, subscribed, no traffic. Phase 2: 200 devices
at one QoS 1 telemetry message per 30 s each (6.7 msg/s), the issue's sizing example; the
readings are counted in the buffer afterwards so the figure is for work actually done.
``python -m bench agent_idle``; ``FP_BENCH_IDLE_S`` shortens the phases (default 60 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
PHASE_S = float(os.environ.get("FP_BENCH_IDLE_S", "60"))
WARMUP_S = 10.0
SAMPLE_EVERY_S = 2.0
# the export and DAG workers live a second or two: the agent + workers sum is sampled faster
TOTAL_EVERY_S = 0.2
DEVICES = 200
HEARTBEAT_S = 30.0
WATCHDOG_USEC = 60_000_000  # the unit's WatchdogSec=60s


@dataclass
class Phase:
    name: str
    seconds: float
    rss_mib: list[float]
    cpu_s: float
    total_max_mib: float = 0.0  # the agent plus its worker processes (what the cgroup counts)
    messages: int = 0

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.seconds


def _rss_mib(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


def _uss_mib(proc: psutil.Process) -> float | None:
    try:
        return float(proc.memory_full_info().uss) / 2**20
    except (psutil.AccessDenied, AttributeError):
        return None


def _cpu_s(proc: psutil.Process) -> float:
    """The agent's CPU time plus that of its finished worker processes (export, DAG)."""
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def _total_mib(proc: psutil.Process) -> float:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it exited meanwhile
            total += child.memory_info().rss
    return total / 2**20


def _measure(proc: psutil.Process, name: str, seconds: float) -> Phase:
    rss: list[float] = []
    total = 0.0
    cpu0, t0 = _cpu_s(proc), time.monotonic()
    next_sample = t0
    while (elapsed := time.monotonic() - t0) < seconds:
        if time.monotonic() >= next_sample:
            rss.append(_rss_mib(proc))
            next_sample += SAMPLE_EVERY_S
        total = max(total, _total_mib(proc))
        time.sleep(min(TOTAL_EVERY_S, max(0.0, seconds - elapsed)))
    rss.append(_rss_mib(proc))
    return Phase(name, time.monotonic() - t0, rss, _cpu_s(proc) - cpu0, total)


def _trickle(port: int, stop: threading.Event, sent: list[int]) -> None:
    """200 devices, each one telemetry message per HEARTBEAT_S, spread evenly (QoS 1)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-idle-devices",
        protocol=mqtt.MQTTv5,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    gap = HEARTBEAT_S / DEVICES
    seq = 0
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            device = seq % DEVICES
            payload = {
                "device_id": f"dev-{device:04d}",
                "ts": int(time.time() * 1000),
                "seq": seq // DEVICES,
                "metrics": {"temp_c": 21.5 + device % 7, "rssi_dbm": -60.0 - device % 20},
                "lat": 52.52,
                "lon": 13.405,
            }
            info = client.publish(
                f"fleet/site-{device % 4}/dev-{device:04d}/telemetry",
                json.dumps(payload),
                qos=1,
            )
            info.wait_for_publish(10)
            seq += 1
            next_at += gap
            stop.wait(max(0.0, next_at - time.monotonic()))
    finally:
        sent.append(seq)
        client.disconnect()
        client.loop_stop()


def _wait_ready(sock: socket.socket, timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.extend(data.splitlines())
        if "READY=1" in seen:
            return seen
    raise RuntimeError(f"the agent sent no READY=1 within {timeout} s (got {seen})")


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out: list[str] = []
    try:
        while True:
            out.extend(sock.recv(4096).decode().splitlines())
    except BlockingIOError:
        pass
    return out


def _native_libs(proc: psutil.Process) -> str:
    """Which heavy native extensions the agent has mapped: RSS grows with each one."""
    try:
        paths = {m.path for m in proc.memory_maps()}
    except (psutil.AccessDenied, OSError):
        return "unknown"
    names = ("pydantic_core", "pyarrow", "libarrow", "_sqlite3", "_ssl")
    return ", ".join(f"{n}: {'yes' if any(n in p for p in paths) else 'no'}" for n in names)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _readings(python: str, config: Path) -> int:
    proc = subprocess.run(
        [python, "-m", "fleetpulse", "agent", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return int(json.loads(proc.stdout)["readings_total"])


def run() -> str:
    sys.path.insert(0, str(ROOT))
    from tests.brokers import Broker

    with tempfile.TemporaryDirectory(prefix="fp-bench-idle-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker").start()
        config = work / "agent.toml"
        config.write_text(
            'gateway_id = "gw-bench-idle"\n'
            f'data_dir = "{work / "data"}"\n'
            "[mqtt]\n"
            'host = "127.0.0.1"\n'
            f"port = {broker.port}\n"
        )
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(work / "notify.sock"))
        from bench.bench_agent_export import _gateway_env

        env = {
            **_gateway_env(work),  # pandas hidden, as on a gateway
            "NOTIFY_SOCKET": str(work / "notify.sock"),
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "PYTHONUNBUFFERED": "1",
        }
        env = {k: v for k, v in env.items() if not k.startswith("FLEETPULSE_")}
        started = time.monotonic()
        agent = subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "agent", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "agent.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            notes = _wait_ready(notify, timeout=60)
            ready_s = time.monotonic() - started
            proc = psutil.Process(agent.pid)
            time.sleep(WARMUP_S)
            idle = _measure(proc, "idle (connected, no traffic)", PHASE_S)
            idle_uss = _uss_mib(proc)
            stop, sent = threading.Event(), []  # type: ignore[var-annotated]
            pub = threading.Thread(target=_trickle, args=(broker.port, stop, sent), daemon=True)
            pub.start()
            time.sleep(WARMUP_S)
            busy = _measure(proc, f"{DEVICES} devices, 1 msg / {HEARTBEAT_S:.0f} s each", PHASE_S)
            busy_uss = _uss_mib(proc)
            stop.set()
            pub.join(30)
            time.sleep(2)  # the last batch commits within its batch interval
            notes += _drain(notify)
            threads = proc.num_threads()
            native = _native_libs(proc)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                rc = agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                rc = agent.wait(10)
            notify.close()
        stored = _readings(sys.executable, config)
        broker.stop()

    busy.messages = sent[0] if sent else 0
    watchdogs = notes.count("WATCHDOG=1")
    total_s = ready_s + 2 * WARMUP_S + idle.seconds + busy.seconds + 2
    rows = []
    for phase, uss in ((idle, idle_uss), (busy, busy_uss)):
        uss_text = f"{uss:.1f}" if uss is not None else "n/a"
        rows.append(
            f"| {phase.name} | {statistics.median(phase.rss_mib):.1f} | {max(phase.rss_mib):.1f} "
            f"| {uss_text} | {phase.total_max_mib:.1f} | {phase.cpu_pct:.2f} % "
            f"| {phase.seconds:.0f} s |"
        )
    rate = busy.messages / (busy.seconds + WARMUP_S) if busy.messages else 0.0
    return f"""## Agent at rest: memory and CPU (`bench_agent_idle`)

`fleetpulse agent run` against a private Mosquitto, with a `$NOTIFY_SOCKET` and a
60 s watchdog as under systemd. Start to `READY=1` (first subscription acknowledged):
**{ready_s:.1f} s**. After {WARMUP_S:.0f} s of warm-up each phase is sampled every
{SAMPLE_EVERY_S:.0f} s; "+ workers" is the agent's RSS plus that of its export and DAG
worker processes, sampled every {TOTAL_EVERY_S} s (what the unit's cgroup counts). CPU is
user+system time of the agent and its finished workers over the phase (100 % = one core).

| phase (MiB) | agent RSS median | agent RSS max | agent USS at end | + workers max | CPU | length |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The trickle published {busy.messages} messages ({rate:.1f} msg/s); the buffer holds
**{stored}** readings after it (every one committed before its PUBACK). The agent sent
{watchdogs} `WATCHDOG=1` in {total_s:.0f} s (one per 30 s is expected with `WatchdogSec=60s`),
ran {threads} thread(s), and exited with code {rc} on SIGTERM. Measured at commit
`{_commit()}`; native code mapped into the agent: {native}. The DAG and the export
run in a worker process (`python -m agent.worker serve`, agent/worker.py) that leaves 10 s
after its last run: pyarrow, numpy and the ADBC driver load there and leave with it, so
the agent's own RSS stays at the ingest footprint. The idle phase still exports once (the
gateway's first, observation-only batch): that worker is the "+ workers" peak there; in
the trickle phase a worker starts for the export every `export_interval_s` (60 s) and
its start-up (~0.7 s of CPU here) is most of the CPU column. The DAG runs every
`dag_interval_s` (300 s, not inside these phases) and costs about the same start-up.
pandas is hidden from the agent and its workers, as on a gateway with only the `agent`
extra (in this dev venv pyarrow would import it in the worker, ~55 MiB more).

Sizing on a Raspberry Pi (estimates, not measured on a Pi): RSS is mostly the Python
interpreter, pydantic-core and paho, and is about the same on 64-bit ARM; expect a few
MiB less on 32-bit Raspberry Pi OS. A Pi 3 (1 GiB, Cortex-A53 at 1.2 GHz) is roughly
6-8x slower per core than this machine, a Pi 4 (Cortex-A72 at 1.5-1.8 GHz) 2.5-3.5x:
scale the CPU column by that: a worker's start-up, ~0.7 s of CPU here, is ~5 s on a Pi 3,
so with an export a minute and a DAG run every 5 minutes about 10 % of one of its four
cores goes to starting workers (a longer `export_interval_s` lowers it).
Memory: the unit's `MemoryHigh=384M` / `MemoryMax=512M` count the agent and its workers
together; the figures above and `bench_agent_export` (the worker's peak during a 100k-row
backlog export) leave headroom under them. On a 1 GiB Pi 3 leave the rest for Mosquitto,
whose queue for the agent may reach ~80 MB at its configured limit
(deploy/mosquitto/README.md). Start-up on a Pi 3 takes correspondingly longer; the
unit's `TimeoutStartSec=90s` allows for it.
"""


if __name__ == "__main__":
    print(run())
