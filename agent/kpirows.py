"""A reserved batch's local KPI rows (``batch_kpis``) → ``kpi`` records of BATCH_SCHEMA.

Runs in the export worker (agent/worker.py): the rows are read with the batch's other
recorded inputs, on the ``sqlite3`` connection that reserved it (before ADBC reads the
readings), and turned into records when the batch is built. They come from the copy the
reserve transaction made (agent/export.py), never from ``kpis`` itself, which the DAG
rewrites: a batch written after a crash, or rebuilt by ``agent requeue --rebuild``, has
the same bytes as the first time.
"""

from __future__ import annotations

import sqlite3
from datetime import date

import pyarrow as pa

from schemas.batch import BATCH_SCHEMA, RECORD_KPI

from .errors import StoreError

DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_COLUMNS = ("day", "device_id", "site", "eligible_s", "up_s", "down_s", "unknown_s",
            "device_uptime", "connectivity_ratio", "slots_counted", "slots_holding",
            "computed_ms")  # fmt: skip


def read_batch_kpis(conn: sqlite3.Connection, seq: int) -> list[tuple]:
    """The KPI rows batch ``seq`` carries, ordered by (day, device_id)."""
    try:
        return conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM batch_kpis WHERE seq = ? ORDER BY day, device_id",
            (seq,),
        ).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the KPI rows of batch {seq}: {exc}") from exc


def kpi_rows(gateway_id: str, rows: list[tuple]) -> pa.Table:
    """``batch_kpis`` rows → BATCH_SCHEMA ``kpi`` records (``ts`` = the day's start, UTC)."""
    n = len(rows)
    cols = {f.name: pa.nulls(n, f.type) for f in BATCH_SCHEMA}
    by_name = dict(zip(_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {}
    days = [date.fromisoformat(d) for d in by_name.get("day", ())]
    cols["record_type"] = pa.array([RECORD_KPI] * n, pa.string())
    cols["gateway_id"] = pa.array([gateway_id] * n, pa.string())
    cols["ts"] = pa.array(
        [(d.toordinal() - _EPOCH_ORDINAL) * DAY_MS for d in days], pa.int64()
    ).cast(BATCH_SCHEMA.field("ts").type)
    cols["day"] = pa.array(days, pa.date32())
    cols["computed_at"] = pa.array(by_name.get("computed_ms", ()), pa.int64()).cast(
        BATCH_SCHEMA.field("computed_at").type
    )
    for name in _COLUMNS[1:-1]:
        cols[name] = pa.array(by_name.get(name, ()), BATCH_SCHEMA.field(name).type)
    return pa.Table.from_arrays([cols[f.name] for f in BATCH_SCHEMA], schema=BATCH_SCHEMA)
