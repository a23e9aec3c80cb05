"""The DAG in chunks of devices gives exactly the kpis table of one computation.

A busy day is computed a chunk of devices at a time (agent/dag.py ``Window``) to bound
the worker's memory; the figures must not notice: the same rows, to the last bit, as
with one chunk, and the golden cases still hold with one device per chunk.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from agent.buffer import Buffer
from agent.dag import run_dag
from tests.kpi_cases import KPI_COLUMNS, KpiCase, compare
from tests.test_agent_dag import SINGLE, load_into_buffer

DAY0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR_MS = 3_600_000
NOW_MS = DAY0_MS + 3 * 86_400_000


def _fleet(db: Path, registry: Path) -> int:
    """~6,000 readings of 40 devices over two days, with what makes the figures move.

    Heartbeats of 10, 30 and 60 s (a chunk of 10 s devices still needs h_max = 60 s for
    the gateway's coverage), outages, offline statuses, a clock 2 h ahead, devices
    missing from the registry and one registered but never heard, duplicates at one
    instant, and a gateway that was disconnected for hours while late readings arrived.
    """
    rnd = random.Random(7)
    buf = Buffer.open(db)
    conn = buf.conn
    lines = ["device_id,site,heartbeat_s,gap_k,commissioned_at,decommissioned_at"]
    rows = []
    for d in range(40):
        did = f"d{d:02d}"
        hb = (10, 30, 60)[d % 3]
        if d % 7 != 3:  # every seventh is missing from the registry (30 s, whole day)
            commissioned = "2026-01-01T06:00:00Z" if d == 5 else ""
            gap_k = "4" if d % 5 == 0 else ""
            lines.append(f"{did},site-{d % 4},{hb},{gap_k},{commissioned},")
        else:
            hb = 30
        t = DAY0_MS + rnd.randrange(0, 4 * HOUR_MS)
        end = DAY0_MS + 2 * 86_400_000 - rnd.randrange(0, 8 * HOUR_MS)
        seq = 0
        while t < end and seq < 150:
            seq += 1
            ahead = 2 * HOUR_MS if d == 11 else 0
            recv = t + rnd.randrange(0, 2_000)
            kind = "status" if seq % 40 == 0 else "telemetry"
            state = "offline" if kind == "status" and seq % 80 == 0 else None
            rows.append((t + ahead, did, kind, seq, f"site-{d % 4}", recv, state))
            if seq % 25 == 0:  # another reading at the same instant
                rows.append((t + ahead, did, "event", seq, f"site-{d % 4}", recv, None))
            # mostly on time, sometimes an outage of minutes to hours
            t += hb * 1000 if rnd.random() < 0.9 else rnd.randrange(1, 300) * hb * 1000
    lines.append("d99,site-9,30,,,")  # registered, never heard
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO readings (ts_ms, device_id, kind, seq, site, received_ms, state)"
        " VALUES (?,?,?,?,?,?,?)",
        rows,
    )
    # disconnected 10:00-16:00 on day one: coverage there comes from readings alone
    conn.executemany(
        "INSERT INTO observations (start_ms, end_ms, alive_ms, closed_by) VALUES (?,?,?,'test')",
        [
            (DAY0_MS - HOUR_MS, DAY0_MS + 10 * HOUR_MS, DAY0_MS + 10 * HOUR_MS),
            (DAY0_MS + 16 * HOUR_MS, DAY0_MS + 40 * HOUR_MS, DAY0_MS + 40 * HOUR_MS),
        ],
    )
    conn.execute("COMMIT")
    buf.close()
    registry.write_text("\n".join(lines) + "\n")
    return len(rows)


def _kpis(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM kpis ORDER BY day, device_id").fetchall()


def test_chunks_of_devices_give_the_kpis_of_one_computation(tmp_path: Path) -> None:
    one, many = tmp_path / "one.sqlite3", tmp_path / "many.sqlite3"
    registry = tmp_path / "registry.csv"
    readings = _fleet(one, registry)
    assert readings > 5_000
    shutil.copy(one, many)
    results = {}
    for db, chunk_rows in ((one, 10**9), (many, 1_000)):
        conn = sqlite3.connect(db, isolation_level=None)
        results[db] = run_dag(conn, "gw1", registry, 2.5, clock_ms=lambda: NOW_MS,
                              chunk_rows=chunk_rows)  # fmt: skip
        conn.close()
    assert results[one].chunks == 1
    # a device is never split, so a chunk holds at least one device: > readings / 1,000
    assert results[many].chunks > readings // 1_000
    assert results[many].rows == results[one].rows > 80
    assert results[many].window_rows == results[one].window_rows
    assert results[many].record.step("window").output["rows"] == results[one].window_rows
    got, want = _kpis(many), _kpis(one)
    assert len(want) == results[one].rows
    # exact equality (floats included): a chunk's rows are the very figures, not close ones
    assert got == want
    # the fleet's figures are not trivial: outages, unknown time and null ratios occur
    assert {r[1] for r in want} >= {"d03", "d11", "d99"}
    assert any(0 < r[8] < 1 for r in want if r[8] is not None)
    assert any(r[7] > 0 for r in want)


@pytest.mark.parametrize("case", SINGLE, ids=[c.name for c in SINGLE])
def test_golden_case_with_one_device_per_chunk(case: KpiCase, tmp_path: Path) -> None:
    conn = load_into_buffer(case, tmp_path / "agent.sqlite3")
    registry = tmp_path / "registry.csv"
    shutil.copy(case.path / "registry.csv", registry)
    result = run_dag(conn, "gw1", registry, case.gap_k, chunk_rows=1)
    devices = {r["device_id"] for r in case.expected}
    assert result.chunks >= len(devices)
    got = [
        dict(zip(("day", "device_id", *KPI_COLUMNS), row, strict=True))
        for row in conn.execute(f"SELECT day, device_id, {', '.join(KPI_COLUMNS)} FROM kpis")
        if row[0] in {d.isoformat() for d in case.days}
    ]
    assert compare(got, case.expected) == [], case.description
