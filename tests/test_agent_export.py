"""Export: batch files central accepts, enrichment (geohash, metrics map), observation pieces,
deterministic rebuilds, and the flush/kpis commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from agent.buffer import Buffer
from agent.export import export_pending, file_sha256, rebuild
from central.validate import Limits, validate_batch
from schemas.batch import META_BATCH_SEQ, META_GATEWAY_ID, META_SCHEMA_VERSION
from tests.agent_upload_support import (
    T0_MS,
    add_observation,
    add_readings,
    agent_config,
    batches,
    cfg_of,
    reading_row,
)

ROOT = Path(__file__).resolve().parent.parent


def export(config: Path, max_rows: int = 100_000, force: bool = False) -> list[Path]:
    cfg = cfg_of(config)
    buf = Buffer.open(cfg.db_path)
    try:
        done = export_pending(cfg.db_path, buf.conn, cfg.gateway_id, cfg.outbox, max_rows,
                              force_observations=force)  # fmt: skip
    finally:
        buf.close()
    return [b.path for b in done]


def test_a_batch_is_what_central_accepts(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(100)))
    add_readings(cfg, [
        reading_row(100, kind="status", state="offline", metrics=None, seq=-1, fw=None),
        reading_row(101, kind="event", event_type="crash", detail="watchdog\nreset", metrics=None),
    ])  # fmt: skip
    add_observation(cfg, T0_MS, T0_MS + 60_000, T0_MS + 60_000)
    (path,) = export(config)
    body = path.read_bytes()
    facts = validate_batch(body, "gw-up", Limits(1_000_000, 1 << 30), 1)
    assert facts.rows == 103
    pf = pq.ParquetFile(path)
    meta = pf.metadata.metadata
    assert meta[META_SCHEMA_VERSION] == b"2" and meta[META_GATEWAY_ID] == b"gw-up"
    assert meta[META_BATCH_SEQ] == b"1"
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    t = pq.read_table(path)
    obs = t.filter(pc.equal(t["record_type"], "observation")).to_pylist()
    assert len(obs) == 1 and obs[0]["device_id"] is None
    rows = t.filter(pc.equal(t["record_type"], "reading")).to_pylist()
    assert rows[0]["metrics"] == [("temp", 20.0), ("rssi", -61.5)]
    assert rows[100]["state"] == "offline" and rows[100]["metrics"] is None
    assert rows[101]["detail"] == "watchdog\nreset" and rows[101]["event_type"] == "crash"
    (b,) = batches(cfg)
    assert (b["state"], b["readings"], b["observations"]) == ("exported", 102, 1)
    assert b["sha256"] == file_sha256(path)[0]


def test_geohash_from_the_message_else_the_registry(tmp_path: Path) -> None:
    registry = tmp_path / "devices.csv"
    registry.write_text("device_id,site,lat,lon\ndev-0,site-a,48.8584,2.2945\n")
    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, [
        reading_row(0, device="dev-0"),  # registry position
        reading_row(1, device="dev-0", lat=52.5163, lon=13.3777),  # its own position
        reading_row(2, device="dev-9"),  # neither
    ])  # fmt: skip
    buf = Buffer.open(cfg.db_path)
    from agent.registry import refresh

    refresh(buf.conn, registry)
    buf.close()
    (path,) = export(config)
    t = pq.read_table(path).to_pylist()
    assert [r["geohash"] for r in t] == ["u09tun", "u33db2", None]


def test_odd_metrics_take_the_slow_path_and_lose_nothing(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, [
        reading_row(0, metrics=json.dumps({"a": 1})),
        reading_row(1, metrics=json.dumps({"a": 1.5, "b": -2})),
        reading_row(2, metrics=json.dumps({"x y": 1e300})),
        reading_row(3, metrics="{}"),
    ])  # fmt: skip
    (path,) = export(config)
    got = [dict(r["metrics"]) for r in pq.read_table(path).to_pylist()]
    assert got == [{"a": 1.0}, {"a": 1.5, "b": -2.0}, {"x y": 1e300}, {}]


def test_observation_pieces_never_overlap_and_cover_the_interval(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_observation(cfg, T0_MS, None, T0_MS + 10_000)  # open, alive at +10 s
    add_readings(cfg, [reading_row(0)])
    export(config)
    buf = Buffer.open(cfg.db_path)
    buf.conn.execute("UPDATE observations SET alive_ms = ?", (T0_MS + 25_000,))
    buf.close()
    add_readings(cfg, [reading_row(1)])
    export(config)
    buf = Buffer.open(cfg.db_path)
    buf.conn.execute("UPDATE observations SET end_ms = ?, alive_ms = ?",
                     (T0_MS + 40_000, T0_MS + 40_000))  # fmt: skip
    buf.close()
    assert export(config) == []  # observation-only pieces wait (no new readings)
    assert len(export(config, force=True)) == 1
    pieces = []
    for f in sorted(cfg.outbox.glob("*.parquet")):
        t = pq.read_table(f)
        for r in t.filter(pc.equal(t["record_type"], "observation")).to_pylist():
            pieces.append((int(r["ts"].timestamp() * 1000), int(r["end_ts"].timestamp() * 1000)))
    assert pieces == [(T0_MS, T0_MS + 10_000), (T0_MS + 10_000, T0_MS + 25_000),
                      (T0_MS + 25_000, T0_MS + 40_000)]  # fmt: skip


def test_a_lost_file_is_rebuilt_with_the_same_bytes(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(500)))
    add_observation(cfg, T0_MS, T0_MS + 60_000, T0_MS + 60_000)
    (path,) = export(config)
    digest = file_sha256(path)[0]
    path.unlink()
    buf = Buffer.open(cfg.db_path)
    try:
        assert rebuild(cfg.db_path, buf.conn, cfg.gateway_id, 1) == digest
    finally:
        buf.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetpulse", "agent", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip


def test_flush_without_central_keeps_batches_and_kpis_show_the_local_view(tmp_path: Path) -> None:
    registry = tmp_path / "devices.csv"
    registry.write_text("device_id,site,heartbeat_s\ndev-0,site-a,30\n")
    config = agent_config(tmp_path, registry={"path": str(registry)})
    cfg = cfg_of(config)
    # dev-0 every 30 s for 10 minutes, the agent listening all day
    add_readings(cfg, (reading_row(i, device="dev-0", seq=i, ts_ms=T0_MS + i * 30_000,
                                   received_ms=T0_MS + i * 30_000) for i in range(21)))  # fmt: skip
    add_observation(cfg, T0_MS, T0_MS + 86_400_000, T0_MS + 86_400_000)
    res = _cli("flush", "--config", str(config))
    assert res.returncode == 1
    assert "no [central] url configured" in res.stderr
    assert [b["state"] for b in batches(cfg)] == ["exported"]
    out = _cli("kpis", "--config", str(config), "--json", "--day", "2026-01-01")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["device_id"] == "dev-0" and row["up_s"] == pytest.approx(615.0)
    assert row["unknown_s"] == 0 and row["down_s"] == pytest.approx(86_400 - 615)
    text = _cli("kpis", "--config", str(config))
    assert "dev-0" in text.stdout and "0.0071" in text.stdout


def test_every_agent_command_is_documented() -> None:
    doc = (ROOT / "docs" / "agent.md").read_text()
    for command in ("run", "status", "flush", "kpis"):
        assert f"fleetpulse agent {command}" in doc
    for flag in ("--json", "--day", "--device"):
        assert flag in doc


def test_the_agent_process_never_loads_pyarrow(tmp_path: Path) -> None:
    """DAG and export run in worker processes: the agent stays at its ingest-only RSS."""
    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(300)))
    add_observation(cfg, T0_MS, T0_MS + 60_000, T0_MS + 60_000)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.config import load_config\n"
        "from agent.scheduler import Stages\n"
        f"stages = Stages(load_config(Path({str(config)!r}), environ={{}}))\n"
        "rows = stages.dag()\n"
        "ids = stages.export()\n"
        "stages.close()\n"
        "print(rows, len(ids), sorted(m for m in ('pyarrow', 'numpy', 'adbc_driver_manager')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows, n, loaded = out.stdout.split(maxsplit=2)
    assert int(rows) > 0 and n == "1" and loaded.strip() == "[]"
    assert [b["state"] for b in batches(cfg)] == ["exported"]


def test_a_worker_failure_is_an_export_error_with_its_reason(tmp_path: Path) -> None:
    from agent.errors import ExportError

    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, [reading_row(0)])
    cfg.outbox.parent.mkdir(parents=True, exist_ok=True)
    cfg.outbox.write_text("not a directory")  # the worker cannot create the outbox
    with pytest.raises(ExportError, match="cannot write batch file"):
        export(config)
    assert [b["state"] for b in batches(cfg)] == ["reserved"]
    cfg.outbox.unlink()
    (path,) = export(config)  # the reserved batch is written by the next run
    assert [b["state"] for b in batches(cfg)] == ["exported"] and path.exists()


def test_a_batch_read_in_slices_keeps_order_sparse_columns_and_rebuilds(tmp_path: Path) -> None:
    """Over 50,000 rows the worker reads and converts the range in parallel slices (ADBC)."""
    from agent.worker import SLICE_ROWS

    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    n = SLICE_ROWS + 7
    # the only event (a column NULL everywhere else) sits in the second slice
    add_readings(cfg, (reading_row(i, kind="event", event_type="boot", metrics=None)
                       if i == n - 3 else reading_row(i) for i in range(n)))  # fmt: skip
    (path,) = export(config)
    t = pq.read_table(path)
    assert t.num_rows == n and t["seq"].to_pylist() == list(range(n))
    assert t["event_type"].to_pylist()[n - 3] == "boot" and t["event_type"].null_count == n - 1
    (b,) = batches(cfg)
    assert (b["readings"], b["min_ts_ms"], b["max_ts_ms"]) == (
        n,
        T0_MS,
        T0_MS + ((n - 1) // 5) * 30_000,
    )
    digest = file_sha256(path)[0]
    path.unlink()
    buf = Buffer.open(cfg.db_path)
    try:
        assert rebuild(cfg.db_path, buf.conn, cfg.gateway_id, 1) == digest
    finally:
        buf.close()


def test_the_worker_stays_for_the_next_run_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    import os
    import signal

    from agent import worker

    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, [reading_row(0)])
    export(config)
    kept = worker._KEPT.proc
    assert kept is not None and kept.poll() is None
    add_readings(cfg, [reading_row(1)])
    export(config)
    assert worker._KEPT.proc is kept  # one start-up for both runs
    os.kill(kept.pid, signal.SIGKILL)  # between runs (the OOM killer, say)
    kept.wait()
    add_readings(cfg, [reading_row(2)])
    assert len(export(config)) == 1  # a fresh worker takes the run
    assert worker._KEPT.proc is not kept
    assert [b["readings"] for b in batches(cfg)] == [1, 1, 1]


def test_the_worker_does_not_outlive_a_killed_agent(tmp_path: Path) -> None:
    import os
    import signal
    import time

    config = agent_config(tmp_path)
    cfg = cfg_of(config)
    add_readings(cfg, [reading_row(0)])
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from agent import worker\n"
        "from agent.config import load_config\n"
        "from agent.scheduler import Stages\n"
        f"stages = Stages(load_config(Path({str(config)!r}), environ={{}}))\n"
        "stages.export()\n"
        "print(worker._KEPT.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)  # fmt: skip
    assert agent.stdout is not None
    pid = int(agent.stdout.readline())
    os.kill(agent.pid, signal.SIGKILL)  # no atexit, no clean close: a crash
    agent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"worker {pid} still running after its agent was killed")
