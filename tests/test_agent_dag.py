"""The agent's DAG path: golden KPI cases through buffer → registry cache → DAG → kpis table."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from agent.buffer import Buffer
from agent.dag import run_dag, touched_days
from agent.errors import RegistryError
from agent.registry import cached, refresh
from pipeline import GateFailed
from schemas import NO_SEQ
from tests.kpi_cases import KPI_COLUMNS, KpiCase, compare, load_cases

CASES = load_cases()
# The agent sees one gateway: cases built on two gateways' views are central's alone.
SINGLE = [c for c in CASES if len(set(c.batch["gateway_id"].to_pylist())) == 1]


def _ms(value: object) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)  # type: ignore[attr-defined]


def load_into_buffer(case: KpiCase, db: Path) -> sqlite3.Connection:
    """The case's readings and observation intervals, stored as the agent stores them."""
    buf = Buffer.open(db)
    conn = buf.conn
    rows = case.batch.to_pylist()
    conn.execute("BEGIN")
    for r in rows:
        if r["record_type"] == "reading":
            conn.execute(
                "INSERT OR IGNORE INTO readings (ts_ms, device_id, kind, seq, site, received_ms,"
                " state, event_type) VALUES (?,?,?,?,?,?,?,?)",
                (_ms(r["ts"]), r["device_id"], r["kind"],
                 NO_SEQ if r["seq"] is None else r["seq"], r["site"],
                 _ms(r["received_at"]) or _ms(r["ts"]), r["state"], r["event_type"]),
            )  # fmt: skip
        else:
            conn.execute(
                "INSERT INTO observations (start_ms, end_ms, alive_ms, closed_by)"
                " VALUES (?, ?, ?, 'test')",
                (_ms(r["ts"]), _ms(r["end_ts"]), _ms(r["end_ts"])),
            )
    conn.execute("COMMIT")
    return conn


def test_the_agent_sees_most_cases() -> None:
    assert len(SINGLE) >= 14, [c.name for c in CASES if c not in SINGLE]


@pytest.mark.parametrize("case", SINGLE, ids=[c.name for c in SINGLE])
def test_golden_case_through_the_dag(case: KpiCase, tmp_path: Path) -> None:
    conn = load_into_buffer(case, tmp_path / "agent.sqlite3")
    registry = tmp_path / "registry.csv"
    shutil.copy(case.path / "registry.csv", registry)
    result = run_dag(conn, "gw1", registry, case.gap_k, tmp_path / "runs")
    assert set(case.days) <= set(result.days) or not case.expected
    got = [
        dict(zip(("day", "device_id", *KPI_COLUMNS), row, strict=True))
        for row in conn.execute(f"SELECT day, device_id, {', '.join(KPI_COLUMNS)} FROM kpis")
        if row[0] in {d.isoformat() for d in case.days}
    ]
    assert compare(got, case.expected) == [], case.description
    assert list((tmp_path / "runs").glob("*.json")), "a run record per run"


def test_a_second_run_touches_only_new_rows(tmp_path: Path) -> None:
    case = next(c for c in SINGLE if c.name == "steady")
    conn = load_into_buffer(case, tmp_path / "agent.sqlite3")
    first = run_dag(conn, "gw1", None, case.gap_k)
    assert first.rows > 0
    again = run_dag(conn, "gw1", None, case.gap_k)
    assert again.days == [] and again.rows == 0 and again.window_rows == 0
    # one late reading on the case's day touches that day (and its neighbours) only
    day = case.days[0]
    conn.execute(
        "INSERT INTO readings (ts_ms, device_id, kind, seq, site, received_ms)"
        " VALUES (?, 'late', 'telemetry', 1, 's1', ?)",
        (_day_ms(day) + 3_600_000, _day_ms(day) + 3_600_000),
    )
    late = run_dag(conn, "gw1", None, case.gap_k)
    assert day in late.days and len(late.days) <= 2


def _day_ms(day: object) -> int:
    from datetime import UTC, datetime

    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)  # type: ignore[attr-defined]


def test_touched_days_cover_the_gap_before_and_the_coverage_after(tmp_path: Path) -> None:
    conn = Buffer.open(tmp_path / "a.sqlite3").conn
    midnight = _day_ms(__import__("datetime").date(2026, 1, 2))
    # 10 s after midnight: the up interval of a reading before midnight may change
    conn.execute(
        "INSERT INTO readings (ts_ms, device_id, kind, seq, site, received_ms)"
        " VALUES (?, 'd', 'telemetry', 1, 's', ?)",
        (midnight + 10_000, midnight + 10_000),
    )
    days = touched_days(conn, 0, 1, 1 << 62, [], 2.5)
    assert [d.isoformat() for d in days] == ["2026-01-01", "2026-01-02"]


def test_a_broken_registry_keeps_the_cached_one(tmp_path: Path) -> None:
    conn = Buffer.open(tmp_path / "a.sqlite3").conn
    path = tmp_path / "registry.csv"
    path.write_text("device_id,site,heartbeat_s\nd1,s1,10\nd2,s1,60\n")
    assert refresh(conn, path)
    assert {d.device_id: d.heartbeat_s for d in cached(conn)} == {"d1": 10.0, "d2": 60.0}
    path.write_text("device_id,site,heartbeat_s\nd1,s1,10\nd2,s1,-5\n")
    with pytest.raises(RegistryError, match=r"row 2: column 'heartbeat_s'"):
        refresh(conn, path)
    assert {d.device_id for d in cached(conn)} == {"d1", "d2"}


def test_parquet_registry(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    conn = Buffer.open(tmp_path / "a.sqlite3").conn
    path = tmp_path / "registry.parquet"
    pq.write_table(pa.table({"device_id": ["d1"], "site": ["s1"], "heartbeat_s": [15.0],
                             "lat": [52.52], "lon": [13.405]}), path)  # fmt: skip
    assert refresh(conn, path)
    (d,) = cached(conn)
    assert (d.heartbeat_s, d.lat) == (15.0, 52.52)


def test_a_failed_gate_stores_nothing_and_keeps_the_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.dag as dag

    case = next(c for c in SINGLE if c.name == "one_outage")
    conn = load_into_buffer(case, tmp_path / "agent.sqlite3")
    real = dag.kpis

    import pyarrow as pa

    from agent.kpi import KPI_SCHEMA

    def broken_kpis(window, devices, touched_days, gap_k):  # type: ignore[no-untyped-def]
        rows = real(window, devices, touched_days, gap_k).to_pylist()
        rows[0]["device_uptime"] = 1.5
        return pa.Table.from_pylist(rows, schema=KPI_SCHEMA)

    broken_kpis.__name__ = "kpis"
    monkeypatch.setattr(dag, "kpis", broken_kpis)
    with pytest.raises(GateFailed, match="device_uptime outside"):
        run_dag(conn, "gw1", None, case.gap_k)
    assert conn.execute("SELECT count(*) FROM kpis").fetchone()[0] == 0
    assert conn.execute("SELECT value FROM meta WHERE key = 'dag_upto'").fetchone()[0] == 0
