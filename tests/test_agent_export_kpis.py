"""The agent's local KPI rows travel in the batches (schema v2, record type ``kpi``): shipped
once, again only when their figures change, the same bytes after a crash or a rebuild, and
neither held nor doubled by a clock that jumps. Real SQLite buffers, the real worker."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from agent.buffer import SCHEMA_VERSION, Buffer
from agent.config import AgentConfig
from agent.dag import stored
from agent.errors import ExportError
from agent.export import OBS_ONLY_EVERY_MS, export_pending, file_sha256, rebuild
from agent.faults import FAULT_ENV
from agent.kpi import KPI_SCHEMA
from central.validate import Limits, validate_batch
from schemas.batch import META_SCHEMA_VERSION
from tests.agent_upload_support import (
    T0_MS,
    add_readings,
    agent_config,
    batches,
    cfg_of,
    reading_row,
)

DAY = date(2026, 1, 1)
DAY2 = date(2026, 1, 2)
NOW_MS = T0_MS + 2 * 86_400_000  # the agent's clock: two days after T0


def kpi_table(up: dict[tuple[date, str], float]) -> pa.Table:
    """KPI rows as the DAG computes them: per (day, device) ``up_s``, the rest down."""
    rows = []
    for (day, dev), up_s in sorted(up.items()):
        rows.append({
            "day": day, "device_id": dev, "site": "site-a", "heartbeat_s": 30.0,
            "eligible_s": 86_400.0, "up_s": up_s, "down_s": 86_400.0 - up_s, "unknown_s": 0.0,
            "device_uptime": up_s / 86_400.0, "connectivity_ratio": 0.5,
            "slots_counted": 2880, "slots_holding": 1440,
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=KPI_SCHEMA)


def store(cfg: AgentConfig, up: dict[tuple[date, str], float], computed_ms: int) -> None:
    """Write KPI rows with the DAG's own writer (one transaction, INSERT OR REPLACE)."""
    buf = Buffer.open(cfg.db_path)
    try:
        stored(kpi_table(up), buf.conn, computed_ms)
    finally:
        buf.close()


def export(cfg: AgentConfig, now_ms: int = NOW_MS, max_rows: int = 100_000,
           force: bool = False) -> list[Path]:  # fmt: skip
    buf = Buffer.open(cfg.db_path)
    try:
        done = export_pending(cfg.db_path, buf.conn, cfg.gateway_id, cfg.outbox, max_rows,
                              clock_ms=lambda: now_ms, force_observations=force)  # fmt: skip
    finally:
        buf.close()
    return [b.path for b in done]


def kpi_records(path: Path) -> list[dict[str, Any]]:
    t = pq.read_table(path)
    return t.filter(pc.equal(t["record_type"], "kpi")).to_pylist()


def shipped(cfg: AgentConfig) -> list[tuple[str, str, float]]:
    """(day, device, up_s) of every kpi record in every batch file, in batch order."""
    out = []
    for f in sorted(cfg.outbox.glob("*.parquet")):
        out += [(r["day"].isoformat(), r["device_id"], r["up_s"]) for r in kpi_records(f)]
    return out


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[AgentConfig]:
    yield cfg_of(agent_config(tmp_path))


def test_kpi_rows_ship_once_and_again_only_after_they_change(cfg: AgentConfig) -> None:
    add_readings(cfg, (reading_row(i) for i in range(10)))
    store(cfg, {(DAY, "dev-0"): 600.0, (DAY, "dev-1"): 900.0}, computed_ms=NOW_MS)
    (first,) = export(cfg)
    body = first.read_bytes()
    assert validate_batch(body, "gw-up", Limits(1_000_000, 1 << 30), 1).rows == 12
    assert pq.ParquetFile(first).metadata.metadata[META_SCHEMA_VERSION] == b"2"
    rec = kpi_records(first)
    assert [(r["device_id"], r["up_s"]) for r in rec] == [("dev-0", 600.0), ("dev-1", 900.0)]
    r0 = rec[0]
    assert r0["day"] == DAY and int(r0["ts"].timestamp() * 1000) == T0_MS  # the day's start
    assert r0["gateway_id"] == "gw-up" and r0["site"] == "site-a" and r0["kind"] is None
    assert r0["down_s"] == 85_800.0 and r0["connectivity_ratio"] == 0.5
    assert (r0["slots_counted"], r0["slots_holding"]) == (2880, 1440)
    assert int(r0["computed_at"].timestamp() * 1000) == NOW_MS

    # the DAG recomputes the same figures (a later computed_ms): nothing ships, whatever runs
    store(cfg, {(DAY, "dev-0"): 600.0, (DAY, "dev-1"): 900.0}, computed_ms=NOW_MS + 60_000)
    add_readings(cfg, [reading_row(10)])
    (second,) = export(cfg)
    assert kpi_records(second) == []
    assert export(cfg, force=True) == []  # not even a forced flush: nothing changed
    # one figure changes: that row, and only it, ships with the next batch
    store(cfg, {(DAY, "dev-0"): 600.0, (DAY, "dev-1"): 930.0}, computed_ms=NOW_MS + 120_000)
    add_readings(cfg, [reading_row(11)])
    (third,) = export(cfg)
    assert [(r["device_id"], r["up_s"]) for r in kpi_records(third)] == [("dev-1", 930.0)]
    assert [b["kpis"] for b in _batch_kpi_counts(cfg)] == [2, 0, 1]
    assert export(cfg, force=True) == []


def _batch_kpi_counts(cfg: AgentConfig) -> list[dict[str, int]]:
    conn = sqlite3.connect(f"file:{cfg.db_path}?mode=ro", uri=True)
    try:
        return [
            {"seq": s, "kpis": n}
            for s, n in conn.execute(
                "SELECT b.seq, (SELECT count(*) FROM batch_kpis k WHERE k.seq = b.seq)"
                " FROM batches b ORDER BY b.seq"
            )
        ]
    finally:
        conn.close()


def test_the_real_dag_recomputing_a_day_ships_nothing_new(tmp_path: Path) -> None:
    """The DAG run twice over the same readings (its cursor reset): same figures, no rows."""
    from agent.scheduler import Stages

    registry = tmp_path / "devices.csv"
    registry.write_text("device_id,site,heartbeat_s\ndev-0,site-a,30\n")
    config = agent_config(tmp_path, registry={"path": str(registry)})
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i, device="dev-0", seq=i, ts_ms=T0_MS + i * 30_000,
                                   received_ms=T0_MS + i * 30_000) for i in range(21)))  # fmt: skip
    stages = Stages(cfg)
    try:
        rows = stages.dag()
        assert rows > 0
        assert len(stages.export(force_observations=True)) == 1
        buf = Buffer.open(cfg.db_path)
        buf.conn.execute("UPDATE meta SET value = 0 WHERE key IN ('dag_upto', 'dag_obs_ms')")
        local = buf.conn.execute("SELECT day, device_id, up_s FROM kpis ORDER BY 1, 2").fetchall()
        buf.close()
        assert stages.dag() == rows  # the days recomputed and stored again ...
        assert stages.export(force_observations=True) == []  # ... with the same figures
    finally:
        stages.close()
    assert shipped(cfg) == local and len(local) == rows
    assert ("2026-01-01", "dev-0", pytest.approx(615.0)) in local


def test_a_crash_after_reserve_writes_and_rebuilds_the_same_bytes(
    cfg: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_readings(cfg, (reading_row(i) for i in range(20)))
    store(cfg, {(DAY, "dev-0"): 600.0, (DAY2, "dev-0"): 60.0}, computed_ms=NOW_MS)
    monkeypatch.setenv(FAULT_ENV, "after_reserve_before_write")
    with pytest.raises(ExportError, match="after_reserve_before_write"):
        export(cfg)
    monkeypatch.delenv(FAULT_ENV)
    assert [b["state"] for b in batches(cfg)] == ["reserved"]
    # the DAG moves on before the next export: the reserved batch keeps what it reserved
    store(cfg, {(DAY, "dev-0"): 650.0}, computed_ms=NOW_MS + 1)
    first, second = export(cfg, force=True)
    assert [(r["day"], r["up_s"]) for r in kpi_records(first)] == [(DAY, 600.0), (DAY2, 60.0)]
    assert [(r["day"], r["up_s"]) for r in kpi_records(second)] == [(DAY, 650.0)]
    # the file is gone: rebuilt from the buffer, byte for byte (agent requeue --rebuild)
    for seq, path in ((1, first), (2, second)):
        digest = file_sha256(path)[0]
        assert batches(cfg)[seq - 1]["sha256"] == digest
        path.unlink()
        buf = Buffer.open(cfg.db_path)
        try:
            assert rebuild(cfg.db_path, buf.conn, cfg.gateway_id, seq) == digest
        finally:
            buf.close()


def test_a_backward_clock_jump_neither_stops_nor_doubles_shipping(cfg: AgentConfig) -> None:
    add_readings(cfg, [reading_row(0)])
    store(cfg, {(DAY, "dev-0"): 600.0}, computed_ms=NOW_MS)
    assert len(export(cfg, now_ms=NOW_MS)) == 1
    # the clock steps back a day; the DAG's computed_ms go back with it
    back = NOW_MS - 86_400_000
    store(cfg, {(DAY, "dev-0"): 630.0, (DAY, "dev-1"): 30.0}, computed_ms=back)
    # no readings: a KPI-only batch; the last batch is "in the future", which must not hold it
    (kpi_only,) = export(cfg, now_ms=back)
    assert [(r["device_id"], r["up_s"]) for r in kpi_records(kpi_only)] == [
        ("dev-0", 630.0),
        ("dev-1", 30.0),
    ]
    assert export(cfg, now_ms=back + 60_000) == []  # nothing changed: nothing ships
    # a change a minute later waits for the period (or the next readings) on the new clock
    store(cfg, {(DAY, "dev-1"): 60.0}, computed_ms=back + 120_000)
    assert export(cfg, now_ms=back + 120_000) == []
    add_readings(cfg, [reading_row(1)])
    (with_readings,) = export(cfg, now_ms=back + 180_000)
    assert [(r["device_id"], r["up_s"]) for r in kpi_records(with_readings)] == [("dev-1", 60.0)]
    # and KPI-only changes leave on their own once the period has passed on the new clock
    store(cfg, {(DAY, "dev-1"): 90.0}, computed_ms=back + 240_000)
    assert export(cfg, now_ms=back + 240_000) == []
    assert len(export(cfg, now_ms=back + 180_000 + OBS_ONLY_EVERY_MS)) == 1
    assert shipped(cfg) == [
        ("2026-01-01", "dev-0", 600.0),
        ("2026-01-01", "dev-0", 630.0),
        ("2026-01-01", "dev-1", 30.0),
        ("2026-01-01", "dev-1", 60.0),
        ("2026-01-01", "dev-1", 90.0),
    ]


def test_kpi_rows_go_first_and_readings_fill_the_rest_of_a_batch(cfg: AgentConfig) -> None:
    add_readings(cfg, (reading_row(i) for i in range(5)))
    store(cfg, {(DAY, f"dev-{i}"): float(i) for i in range(10)}, computed_ms=NOW_MS)
    a, b, c, d = export(cfg, max_rows=4)
    # a batch full of KPI rows leaves at once, even without readings
    assert [len(kpi_records(f)) for f in (a, b, c, d)] == [4, 4, 2, 0]
    assert [pq.read_metadata(f).num_rows for f in (a, b, c, d)] == [4, 4, 4, 3]
    assert [b["readings"] for b in batches(cfg)] == [0, 0, 2, 3]
    assert [r for _, r, _ in shipped(cfg)] == [f"dev-{i}" for i in range(10)]
    # fewer than a batch's worth, no readings: they wait for the period (or a flush)
    store(cfg, {(DAY, "dev-0"): 30.0}, computed_ms=NOW_MS + 1)
    assert export(cfg, max_rows=4) == []
    (e,) = export(cfg, max_rows=4, force=True)
    assert [(r["device_id"], r["up_s"]) for r in kpi_records(e)] == [("dev-0", 30.0)]


def test_a_v2_buffer_is_upgraded_and_its_kpi_rows_ship(cfg: AgentConfig) -> None:
    store(cfg, {(DAY, "dev-0"): 600.0}, computed_ms=NOW_MS)
    # make it the v2 layout an older agent left: no v3 tables or triggers
    conn = sqlite3.connect(cfg.db_path)
    conn.executescript(
        "DROP TRIGGER kpis_dirty_insert; DROP TRIGGER kpis_dirty_update;"
        " DROP TABLE kpi_dirty; DROP TABLE kpi_shipped; DROP TABLE batch_kpis;"
        " PRAGMA user_version = 2;"
    )
    conn.close()
    buf = Buffer.open(cfg.db_path)
    try:
        assert buf.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    finally:
        buf.close()
    (path,) = export(cfg, force=True)
    assert [(r["device_id"], r["up_s"]) for r in kpi_records(path)] == [("dev-0", 600.0)]
    assert export(cfg, force=True) == []


def test_a_dropped_batch_gives_its_kpi_rows_back_and_pruning_drops_the_copies(
    cfg: AgentConfig,
) -> None:
    from agent.disk import drop_oldest, prune_uploaded

    add_readings(cfg, [reading_row(0)])
    store(cfg, {(DAY, "dev-0"): 600.0, (DAY, "dev-1"): 60.0}, computed_ms=NOW_MS)
    add_readings(cfg, [reading_row(1)])
    assert len(export(cfg)) == 1
    store(cfg, {(DAY, "dev-1"): 90.0}, computed_ms=NOW_MS + 1)
    add_readings(cfg, [reading_row(2)])
    assert len(export(cfg)) == 1
    buf = Buffer.open(cfg.db_path)
    try:
        assert drop_oldest(buf.conn, 1) == 2  # batch 1 (2 readings) never reaches central
        count = "SELECT count(*) FROM batch_kpis WHERE seq = ?"
        assert buf.conn.execute(count, (1,)).fetchone()[0] == 0
    finally:
        buf.close()
    # dev-0's only copy was in the dropped batch: it ships again; dev-1's latest is in batch 2
    (third,) = export(cfg, force=True)
    assert [(r["device_id"], r["up_s"]) for r in kpi_records(third)] == [("dev-0", 600.0)]
    buf = Buffer.open(cfg.db_path)
    try:
        buf.conn.execute("UPDATE batches SET state = 'uploaded', uploaded_ms = 1 WHERE seq > 1")
        prune_uploaded(buf.conn, 2)
        left = buf.conn.execute("SELECT count(*) FROM batch_kpis").fetchone()[0]
        assert left == 0
    finally:
        buf.close()
