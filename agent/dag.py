"""The agent's local uptime DAG: registry → touched days → window → KPIs → gate → stored.

Why recompute instead of carrying sessionizer state: a reading changes at most the up
interval that starts at its predecessor (within the gap tolerance G before it) and the
observed coverage 2 h_max after it, so the (device, day) figures it can change lie in
the days of [t - G, t + 2 h_max]. A run reads only the *new* rows (ids above
``meta.dag_upto``) to find those days, then recomputes them with ``agent.kpi.compute_kpis``
— the very function central runs — from the readings of a window of the day plus
max(G, 2 h_max, skew) on each side. A run costs the rows of the touched days, not of the
history; figures are identical to a full recompute by construction (no second
implementation of DESIGN §4 to drift), and late or out-of-order readings need no special
case. The state is two cursors in ``meta`` (``dag_upto``, ``dag_obs_ms``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas import DEFAULT_HEARTBEAT_S, SKEW_LIMIT_MS, Device

from . import registry as reg
from .buffer import META_DAG_UPTO, get_meta, set_meta
from .errors import StoreError

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline import RunRecord

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
META_DAG_OBS_MS = "dag_obs_ms"
# Run records kept in data_dir/dag-runs (the newest).
KEEP_RECORDS = 50
# Window rows turned into Python objects at once (bounds the DAG worker's peak memory).
READ_CHUNK = 16_384


def _window_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("ts_ms", pa.int64()), ("received_ms", pa.int64()), ("seq", pa.int64()),
        ("device_id", pa.string()), ("kind", pa.string()), ("site", pa.string()),
        ("state", pa.string()),
    ])  # fmt: skip


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def margins_ms(devices: list[Device], gap_k: float) -> tuple[int, int]:
    """(G_max, 2 h_max) over the registry and the default heartbeat, in ms."""
    hb = [DEFAULT_HEARTBEAT_S] + [d.heartbeat_s for d in devices]
    gaps = [gap_k * DEFAULT_HEARTBEAT_S] + [
        (d.gap_k if d.gap_k is not None else gap_k) * d.heartbeat_s for d in devices
    ]
    return int(max(gaps) * 1000) + 1, int(2 * max(hb) * 1000) + 1


# -- steps: plain functions named for their output ----------------------------------------


def devices(conn: sqlite3.Connection, registry_path: Path | None) -> list[Device]:
    """The registry, refreshed from its file when it changed, else the cached one."""
    try:
        reg.refresh(conn, registry_path)
    except Exception as exc:  # a broken file must not stop the DAG: the cache is still good
        log.error("%s", exc)
    return reg.cached(conn)


def touched_days(
    conn: sqlite3.Connection, dag_from: int, dag_to: int, obs_since_ms: int,
    devices: list[Device], gap_k: float,
) -> list[date]:  # fmt: skip
    """Days whose figures the rows with ids in (dag_from, dag_to] or new observations change."""
    g, h2 = margins_ms(devices, gap_k)
    event = f"(CASE WHEN ts_ms - received_ms > {SKEW_LIMIT_MS} THEN received_ms ELSE ts_ms END)"
    days: set[int] = set()
    for shift in (-g, 0, h2):
        days.update(
            r[0] for r in conn.execute(
                f"SELECT DISTINCT ({event} + ?) / {DAY_MS} FROM readings WHERE id > ? AND id <= ?",
                (shift, dag_from, dag_to),
            )
        )  # fmt: skip
    for start, end in conn.execute(
        "SELECT start_ms, coalesce(end_ms, alive_ms) FROM observations"
        " WHERE coalesce(end_ms, alive_ms) > ?",
        (obs_since_ms,),
    ):
        # only the part not seen by the last run: an interval open for a month must not
        # touch the whole month on every run
        first = max(start, obs_since_ms)
        days.update(range(first // DAY_MS, (end - 1) // DAY_MS + 1))
    return sorted(_day(d * DAY_MS) for d in days)


def window(
    conn: sqlite3.Connection, gateway_id: str, touched_days: list[date],
    devices: list[Device], gap_k: float,
) -> pa.Table:  # fmt: skip
    """Readings and observation intervals around the touched days, in BATCH_SCHEMA form."""
    import pyarrow as pa

    from schemas.batch import BATCH_SCHEMA, RECORD_OBSERVATION, RECORD_READING

    if not touched_days:
        return BATCH_SCHEMA.empty_table()
    raw_schema = _window_schema()
    g, h2 = margins_ms(devices, gap_k)
    margin = max(g, h2, SKEW_LIMIT_MS) + 1
    chunks: list[pa.RecordBatch] = []
    obs: list[tuple[int, int]] = []
    for lo_day, hi_day in _runs(touched_days):
        lo = int(datetime(lo_day.year, lo_day.month, lo_day.day, tzinfo=UTC).timestamp()) * 1000
        hi = lo + ((hi_day - lo_day).days + 1) * DAY_MS
        lo, hi = lo - margin, hi + margin
        cur = conn.execute(
            "SELECT ts_ms, received_ms, seq, device_id, kind, site, state FROM readings"
            " WHERE ts_ms >= ? AND ts_ms < ?"
            " UNION ALL SELECT ts_ms, received_ms, seq, device_id, kind, site, state FROM readings"
            " WHERE ts_ms >= ? AND received_ms >= ? AND received_ms < ?"
            " AND ts_ms - received_ms > ?",
            (lo, hi, hi, lo, hi, SKEW_LIMIT_MS),
        )
        # Arrow chunk by chunk: a busy gateway's day is over a million readings, whose
        # Python objects all at once would need several hundred MiB in the DAG worker
        while rows := cur.fetchmany(READ_CHUNK):
            columns = zip(*rows, strict=True)
            chunks.append(pa.record_batch(
                [pa.array(c, f.type) for c, f in zip(columns, raw_schema, strict=True)],
                schema=raw_schema,
            ))  # fmt: skip
        obs += conn.execute(
            "SELECT start_ms, coalesce(end_ms, alive_ms) FROM observations"
            " WHERE start_ms < ? AND coalesce(end_ms, alive_ms) > ?",
            (hi, lo),
        ).fetchall()
    raw = pa.Table.from_batches(chunks, schema=raw_schema).combine_chunks()
    n, m = raw.num_rows, len(obs)
    ts_type = pa.timestamp("ms", tz="UTC")

    def readings_then(name: str, tail: pa.Array) -> pa.Array:
        head = raw[name].combine_chunks().cast(tail.type)
        return pa.concat_arrays([head, tail])

    data = {f.name: pa.nulls(n + m, f.type) for f in BATCH_SCHEMA}
    data["record_type"] = pa.concat_arrays([
        pa.repeat(pa.scalar(RECORD_READING, pa.string()), n),
        pa.repeat(pa.scalar(RECORD_OBSERVATION, pa.string()), m),
    ])  # fmt: skip
    data["gateway_id"] = pa.repeat(pa.scalar(gateway_id, pa.string()), n + m)
    data["ts"] = readings_then("ts_ms", pa.array([s for s, _ in obs], pa.int64()).cast(ts_type))
    data["received_at"] = readings_then("received_ms", pa.nulls(m, ts_type))
    data["end_ts"] = pa.concat_arrays([
        pa.nulls(n, ts_type), pa.array([e for _, e in obs], pa.int64()).cast(ts_type)
    ])  # fmt: skip
    for name in ("seq", "device_id", "kind", "site", "state"):
        data[name] = readings_then(name, pa.nulls(m, BATCH_SCHEMA.field(name).type))
    # a long observation interval can overlap two runs of days: once is enough
    table = pa.Table.from_arrays([data[f.name] for f in BATCH_SCHEMA], schema=BATCH_SCHEMA)
    return table


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days grouped into (first, last) runs, so windows are read once."""
    out: list[tuple[date, date]] = []
    for d in days:
        if out and d - out[-1][1] == timedelta(days=1):
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def kpis(
    window: pa.Table, devices: list[Device], touched_days: list[date], gap_k: float
) -> pa.Table:
    """Per device-day KPIs of the touched days (DESIGN §4, agent/kpi.py)."""
    from .kpi import compute_kpis

    return compute_kpis(window, devices, touched_days, gap_k=gap_k)


def stored(kpis: pa.Table, conn: sqlite3.Connection, now_ms: int) -> int:
    """Upsert the KPI rows into the buffer's ``kpis`` table; rows written."""
    rows = [
        (r["day"].isoformat(), r["device_id"], r["site"], r["heartbeat_s"], r["eligible_s"],
         r["up_s"], r["down_s"], r["unknown_s"], r["device_uptime"], r["connectivity_ratio"],
         r["slots_counted"], r["slots_holding"], now_ms)
        for r in kpis.to_pylist()
    ]  # fmt: skip
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO kpis (day, device_id, site, heartbeat_s, eligible_s,"
                " up_s, down_s, unknown_s, device_uptime, connectivity_ratio, slots_counted,"
                " slots_holding, computed_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"cannot store KPI rows: {exc}") from exc
    return len(rows)


# -- the pipeline and one run ---------------------------------------------------------------


@dataclass(frozen=True)
class DagResult:
    """What one DAG run did."""

    days: list[date]
    rows: int
    window_rows: int
    duration_s: float
    record: RunRecord


def build() -> Any:
    """The DAG: steps above plus the KPI gate (ratios in [0, 1], parts sum to eligible)."""
    from pipeline import Gate, Pipeline, step

    from .kpi import kpi_checks

    return Pipeline(
        [
            step(devices, cache=False),
            step(touched_days, cache=False),
            step(window, cache=False),
            step(kpis, cache=False),
            step(stored, cache=False),
        ],
        gates=[Gate("kpi_sane", "kpis", kpi_checks)],
        name="agent_kpis",
    )


def run_dag(
    conn: sqlite3.Connection,
    gateway_id: str,
    registry_path: Path | None,
    gap_k: float,
    record_dir: Path | None = None,
    *,
    clock_ms: Callable[[], int] = wall_ms,
) -> DagResult:
    """Run the DAG over what arrived since the last run; advance the cursors on success.

    A failed gate raises ``pipeline.GateFailed`` (nothing stored, cursors unchanged, the
    run record says which rows and why).
    """
    started = time.perf_counter()
    now = clock_ms()
    dag_from = get_meta(conn, META_DAG_UPTO)
    dag_to = int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
    obs_since = get_meta(conn, META_DAG_OBS_MS)
    if record_dir is not None:
        record_dir.mkdir(parents=True, exist_ok=True)
    res = build().run(
        {
            "conn": conn,
            "registry_path": registry_path,
            "dag_from": dag_from,
            "dag_to": dag_to,
            "obs_since_ms": obs_since,
            "gap_k": gap_k,
            "gateway_id": gateway_id,
            "now_ms": now,
        },
        record_dir=None if record_dir is None else str(record_dir),
    )
    obs_to = conn.execute(
        "SELECT coalesce(max(coalesce(end_ms, alive_ms)), 0) FROM observations"
    ).fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    set_meta(conn, META_DAG_UPTO, dag_to)
    set_meta(conn, META_DAG_OBS_MS, max(int(obs_to), obs_since))
    conn.execute("COMMIT")
    if record_dir is not None:
        _trim(record_dir)
    took = time.perf_counter() - started
    days = res["touched_days"]
    log.info("DAG: %d KPI rows for %d day(s) in %.2f s", res["stored"], len(days), took)
    return DagResult(days, res["stored"], res["window"].num_rows, took, res.record)


def _trim(record_dir: Path) -> None:
    files = sorted(record_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for old in files[:-KEEP_RECORDS]:
        with contextlib.suppress(OSError):
            old.unlink()
