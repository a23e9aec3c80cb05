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

Memory: the touched days of a busy gateway hold over half a million readings, so the
window is a plan (``Window``), not a table: the KPIs are computed a chunk of devices at a
time (about ``CHUNK_ROWS`` readings each, a device never split) with the gateway's
observed coverage read once for all, and the worker's peak is one chunk's.
"""

from __future__ import annotations

import contextlib
import json
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

    from .intervals import Coverage

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
META_DAG_OBS_MS = "dag_obs_ms"
# Run records kept in data_dir/dag-runs (the newest).
KEEP_RECORDS = 50
# Window rows turned into Python objects at once (bounds the DAG worker's peak memory).
READ_CHUNK = 16_384
# Readings per chunk of devices computed at once: the DAG worker's peak is ~0.6 KiB per
# reading of a chunk on top of ~100 MiB, so this keeps it near 160 MiB whatever a day holds
# (docs/agent.md "Memory"); smaller chunks only add a scan of the window's index each.
CHUNK_ROWS = 100_000


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


@dataclass(frozen=True)
class Window:
    """The readings and observation intervals around the touched days, as a plan.

    Not the rows themselves: a busy gateway's day is over half a million readings, whose
    arrays all at once took the DAG worker past the unit's ``MemoryHigh``. What the KPIs
    need of the whole window is small and read here: each device's row count (to cut the
    devices into chunks of about ``chunk_rows`` readings) and the gateway's observed
    coverage (its intervals and 2 h_max after every reading of *any* device, which is
    why a chunk of devices cannot derive it from its own rows). ``batch(chunk)`` reads a
    chunk's readings in BATCH_SCHEMA form when ``kpis`` gets to it.
    """

    conn: sqlite3.Connection
    gateway_id: str
    upto: int  # the run's dag_to: the last reading id it reads
    # (lo, hi) ts_ms bounds of each run of touched days, margins included
    ranges: list[tuple[int, int]]
    # device ids per chunk (sorted, a device whole in one chunk) and each chunk's readings
    chunks: list[list[str]]
    chunk_readings: list[int]
    coverage: Coverage
    observations: int

    @property
    def num_rows(self) -> int:
        """Reading and observation rows, as the one table this replaces had (lineage)."""
        return sum(self.chunk_readings) + self.observations

    @property
    def schema(self) -> pa.Schema:
        from schemas.batch import BATCH_SCHEMA_V1

        return BATCH_SCHEMA_V1

    def batch(self, devices: list[str]) -> pa.Table:
        """The readings of these devices in the window, in BATCH_SCHEMA form (the v1 columns:
        the KPI columns of v2 would only be nulls in memory)."""
        import pyarrow as pa

        from schemas.batch import BATCH_SCHEMA_V1 as BATCH_SCHEMA
        from schemas.batch import RECORD_READING

        raw_schema = _window_schema()
        ids = json.dumps(devices)
        chunks: list[pa.RecordBatch] = []
        for lo, hi in self.ranges:
            # json_each: one parameter whatever the number of devices (no variable limit)
            sql, args = _in_window(
                _READ_COLUMNS,
                lo,
                hi,
                self.upto,
                "AND device_id IN (SELECT value FROM json_each(?))",
            )
            cur = self.conn.execute(sql, (*args[:3], ids, *args[3:], ids))
            # Arrow chunk by chunk: Python objects of all the rows at once would cost
            # several times the Arrow arrays
            while rows := cur.fetchmany(READ_CHUNK):
                columns = zip(*rows, strict=True)
                chunks.append(pa.record_batch(
                    [pa.array(c, f.type) for c, f in zip(columns, raw_schema, strict=True)],
                    schema=raw_schema,
                ))  # fmt: skip
        raw = pa.Table.from_batches(chunks, schema=raw_schema).combine_chunks()
        del chunks
        n = raw.num_rows
        ts_type = pa.timestamp("ms", tz="UTC")
        data = {f.name: pa.nulls(n, f.type) for f in BATCH_SCHEMA}
        data["record_type"] = pa.repeat(pa.scalar(RECORD_READING, pa.string()), n)
        data["gateway_id"] = pa.repeat(pa.scalar(self.gateway_id, pa.string()), n)
        data["ts"] = raw["ts_ms"].combine_chunks().cast(ts_type)
        data["received_at"] = raw["received_ms"].combine_chunks().cast(ts_type)
        for name in ("seq", "device_id", "kind", "site", "state"):
            data[name] = raw[name].combine_chunks().cast(BATCH_SCHEMA.field(name).type)
        return pa.Table.from_arrays([data[f.name] for f in BATCH_SCHEMA], schema=BATCH_SCHEMA)


_READ_COLUMNS = "ts_ms, received_ms, seq, device_id, kind, site, state"
_EVENT = f"(CASE WHEN ts_ms - received_ms > {SKEW_LIMIT_MS} THEN received_ms ELSE ts_ms END)"


def _in_window(
    columns: str, lo: int, hi: int, upto: int, where: str = ""
) -> tuple[str, tuple[int, ...]]:
    """SQL and parameters of the window [lo, hi)'s readings: by device time, plus those whose
    clock ran ahead by more than the skew limit and whose received time is in the window.

    Two SELECTs (UNION ALL, disjoint: the second has ts_ms >= hi) so that each scans a range
    of the (ts_ms, ...) index; ``where`` adds a condition to both. Only ids up to the run's
    ``dag_to``: a run reads the window several times (counts, coverage, each chunk) and
    all must see the same rows while ingest commits; later rows are the next run's.
    """
    sql = (
        f"SELECT {columns} FROM readings WHERE ts_ms >= ? AND ts_ms < ? AND id <= ? {where}"
        f" UNION ALL SELECT {columns} FROM readings WHERE ts_ms >= ? AND received_ms >= ?"
        f" AND received_ms < ? AND ts_ms - received_ms > {SKEW_LIMIT_MS} AND id <= ? {where}"
    )
    return sql, (lo, hi, upto, hi, lo, hi, upto)


def window(
    conn: sqlite3.Connection, gateway_id: str, touched_days: list[date],
    devices: list[Device], gap_k: float, dag_to: int, chunk_rows: int,
) -> Window:  # fmt: skip
    """Readings and observation intervals around the touched days: the plan of ``Window``."""
    import numpy as np

    from .intervals import Coverage

    ranges: list[tuple[int, int]] = []
    if touched_days:
        g, h2 = margins_ms(devices, gap_k)
        margin = max(g, h2, SKEW_LIMIT_MS) + 1
        for lo_day, hi_day in _runs(touched_days):
            lo = int(datetime(lo_day.year, lo_day.month, lo_day.day, tzinfo=UTC).timestamp())
            lo *= 1000
            hi = lo + ((hi_day - lo_day).days + 1) * DAY_MS
            ranges.append((lo - margin, hi + margin))
    counts: dict[str, int] = {}
    obs: list[tuple[int, int]] = []
    for lo, hi in ranges:
        sql, args = _in_window("device_id", lo, hi, dag_to)
        for did, n in conn.execute(
            f"SELECT device_id, count(*) FROM ({sql}) GROUP BY device_id", args
        ):
            counts[did] = counts.get(did, 0) + n
        obs += conn.execute(
            "SELECT start_ms, coalesce(end_ms, alive_ms) FROM observations"
            " WHERE start_ms < ? AND coalesce(end_ms, alive_ms) > ?",
            (hi, lo),
        ).fetchall()
    # The gateway's coverage as agent/kpi.py derives it from the whole window: h_max is the
    # longest heartbeat of the devices it reported (registry, else the default), and every
    # reading adds [t, t + 2 h_max); merged as read, so it costs its intervals, not its rows
    heartbeat = {d.device_id: d.heartbeat_s * 1000.0 for d in devices}
    h_max = max((heartbeat.get(d, DEFAULT_HEARTBEAT_S * 1000.0) for d in counts), default=0.0)
    starts = np.array([s for s, _ in obs], dtype=np.float64)
    ends = np.array([e for _, e in obs], dtype=np.float64)
    for lo, hi in ranges if counts else []:
        cur = conn.execute(*_in_window(_EVENT, lo, hi, dag_to))
        while rows := cur.fetchmany(READ_CHUNK * 4):
            t = np.array(rows, dtype=np.float64).reshape(-1)
            merged = Coverage.of(np.concatenate((starts, t)), np.concatenate((ends, t + 2 * h_max)))
            starts, ends = merged.starts, merged.ends
    coverage = Coverage.of(starts, ends)
    # every device that gets rows: the registry's and those heard; a device is never split
    # (its up intervals walk its whole window in order), so a chunk may exceed chunk_rows
    # by one device's readings
    chunks: list[list[str]] = []
    sizes: list[int] = []
    if ranges:
        for did in sorted(set(heartbeat) | set(counts)):
            n = counts.get(did, 0)
            if not chunks or (sizes[-1] + n > chunk_rows and sizes[-1] > 0):
                chunks.append([])
                sizes.append(0)
            chunks[-1].append(did)
            sizes[-1] += n
    return Window(conn, gateway_id, dag_to, ranges, chunks, sizes, coverage, len(obs))


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days grouped into (first, last) runs, so windows are read once."""
    out: list[tuple[date, date]] = []
    for d in days:
        if out and d - out[-1][1] == timedelta(days=1):
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def kpis(window: Window, devices: list[Device], touched_days: list[date], gap_k: float) -> pa.Table:
    """Per device-day KPIs of the touched days (DESIGN §4, agent/kpi.py), chunk by chunk.

    KPIs are per device and day, so each chunk of devices is computed alone with the
    window's coverage and its arrays are freed before the next: the worker's peak is one
    chunk's, not the day's. The rows of all chunks are returned together (one per device
    and day: small) so the gate sees the whole run and ``stored`` commits it at once, as
    before: a run still stores all its rows or none.
    """
    import pyarrow as pa

    from .kpi import KPI_SCHEMA, compute_kpis

    parts: list[pa.Table] = []
    pool = pa.default_memory_pool()
    for chunk in window.chunks:
        members = set(chunk)
        batch = window.batch(chunk)
        parts.append(compute_kpis(
            batch, [d for d in devices if d.device_id in members], touched_days,
            gap_k=gap_k, observed={window.gateway_id: window.coverage},
        ))  # fmt: skip
        del batch
        # hand the chunk's Arrow buffers back to the OS now (with the system allocator
        # this trims malloc's heap), so the next chunk does not stack on them
        pool.release_unused()
    if not parts:
        return KPI_SCHEMA.empty_table()
    # the order one computation gave (day, then device): gate failures name the same rows
    return pa.concat_tables(parts).sort_by([("day", "ascending"), ("device_id", "ascending")])


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
    # chunks of devices the KPIs were computed in (see Window)
    chunks: int = 1


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
    chunk_rows: int = CHUNK_ROWS,
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
            "chunk_rows": chunk_rows,
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
    log.info("DAG: %d KPI rows for %d day(s) in %d chunk(s) in %.2f s", res["stored"],
             len(days), len(res["window"].chunks), took)  # fmt: skip
    win = res["window"]
    return DagResult(days, res["stored"], win.num_rows, took, res.record, len(win.chunks))


def _trim(record_dir: Path) -> None:
    files = sorted(record_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for old in files[:-KEEP_RECORDS]:
        with contextlib.suppress(OSError):
            old.unlink()
