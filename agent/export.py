"""Export: new readings, observation pieces and changed KPI rows → one Parquet batch, exactly once.

Protocol (each step durable before the next):

1. **reserve**, one SQLite transaction: the next sequence number, the reading id range
   ``(exported_upto, last_id]``, the observation pieces not shipped yet, the local KPI rows
   whose figures differ from what was last shipped (``kpi_shipped``); the ``batches`` row
   (state ``reserved``), the copy of those KPI rows (``batch_kpis``) and the advanced
   cursors commit together;
2. **write** the file: temp → fsync → rename → fsync(dir);
3. **mark** the row ``exported`` with its sha256 and size.

A crash after 1 leaves a ``reserved`` row: the next run writes the file again from the
recorded range, pieces and KPI copy (the content depends only on them, the sequence and
the registry). No upload ever reads a ``reserved`` batch, so its id has never reached central
with other content.

The steps run in the worker process (agent/worker.py, gone 10 s after its last run):
pyarrow, numpy and the ADBC driver cost the agent 150+ MiB of RSS once loaded, and a
process that exits gives all of it back. The agent's side here (``export_pending``,
``rebuild``) checks whether there is anything to do with plain ``sqlite3``, holds
``OUTBOX_LOCK`` (and a file lock in ``data_dir``, against a ``fleetpulse agent flush``
next to the service) while the worker runs, and turns the worker's JSON answer back into
``Exported`` rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .buffer import META_EXPORTED_UPTO, get_meta, set_meta
from .errors import ExportError, StoreError
from .faults import fault_point

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# Observation-only batches (no new readings, only observation pieces and changed KPI rows)
# leave at most this often: without them a silent fleet's "observed" time would never
# reach central, with them every minute an idle gateway would send a trickle of tiny
# files. A full batch's worth of changed KPI rows leaves at once.
OBS_ONLY_EVERY_MS = 15 * 60 * 1000
# The clock is taken to have stepped back when it reads this much before the newest batch
# (the agent's scheduler calls a 30 s change a jump): such batches are due at once.
CLOCK_STEP_BACK_MS = 30_000
# The figures of a KPI row that decide whether it changed since it was shipped (not
# ``computed_ms``: a recompute with the same figures ships nothing).
KPI_FIGURES = ("site", "eligible_s", "up_s", "down_s", "unknown_s", "device_uptime",
               "connectivity_ratio", "slots_counted", "slots_holding")  # fmt: skip
# Batches written per export run at most, so one run never holds the outbox lock for long.
MAX_BATCHES_PER_RUN = 50
# In data_dir: flock'ed while a worker writes batches, so two agent processes on one
# data_dir (the service and ``fleetpulse agent flush``) never export at the same time.
LOCK_FILE = "outbox.lock"

# Export, retention and drop_oldest touch the same rows and files: one at a time. The
# export holds it while its worker process runs.
OUTBOX_LOCK = threading.Lock()


@dataclass(frozen=True)
class Reserved:
    """A reserved batch: what goes into it."""

    seq: int
    batch_id: str
    first_id: int
    last_id: int
    path: Path


@dataclass(frozen=True)
class Exported:
    """A written and marked batch."""

    seq: int
    batch_id: str
    readings: int
    observations: int
    bytes: int
    sha256: str
    path: Path
    kpis: int = 0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.contextmanager
def outbox_lock(data_dir: Path) -> Iterator[None]:
    """``OUTBOX_LOCK`` and the flock on ``data_dir/outbox.lock``, for a worker's run."""
    with OUTBOX_LOCK:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


# -- 1. reserve (in the worker) ------------------------------------------------------------


def reserve(
    conn: sqlite3.Connection,
    gateway_id: str,
    outbox: Path,
    max_rows: int,
    now_ms: int,
    *,
    force_observations: bool = False,
) -> Reserved | None:
    """Reserve the next batch (one transaction); None when there is nothing to export."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            res = _reserve(conn, gateway_id, outbox, max_rows, now_ms, force_observations)
            conn.execute("COMMIT" if res is not None else "ROLLBACK")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"cannot reserve a batch in the buffer: {exc}") from exc
    return res


def _pieces(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """Observation pieces not shipped yet: (observation id, start, end)."""
    pieces = [
        (oid, max(start, shipped if shipped is not None else start), end)
        for oid, start, end, shipped in conn.execute(
            "SELECT o.id, o.start_ms, coalesce(o.end_ms, o.alive_ms), s.upto_ms"
            " FROM observations o LEFT JOIN obs_shipped s ON s.obs_id = o.id"
            " WHERE coalesce(o.end_ms, o.alive_ms) > coalesce(s.upto_ms, o.start_ms)"
            " ORDER BY o.id"
        )
    ]
    return [p for p in pieces if p[2] > p[1]]


def _obs_only_due(conn: sqlite3.Connection, now_ms: int, force: bool) -> bool:
    # the newest batch by sequence, not by its clock: after a step back of the clock the
    # period runs from the first batch on the new clock, and the step does not hold them
    row = conn.execute("SELECT created_ms FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
    latest = None if row is None else row[0]
    if force or latest is None or now_ms < latest - CLOCK_STEP_BACK_MS:
        return True
    return now_ms - latest >= OBS_ONLY_EVERY_MS


_KPI_CHANGED = (
    "SELECT k.day, k.device_id, " + ", ".join(f"k.{c}" for c in KPI_FIGURES[1:])
    + ", k.site, k.computed_ms FROM kpi_dirty d"
    " JOIN kpis k ON k.day = d.day AND k.device_id = d.device_id"
    " LEFT JOIN kpi_shipped s ON s.day = k.day AND s.device_id = k.device_id"
    " WHERE s.day IS NULL OR " + " OR ".join(f"k.{c} IS NOT s.{c}" for c in KPI_FIGURES)
    + " ORDER BY k.day, k.device_id LIMIT ?"
)  # fmt: skip


def _kpis_changed_count(conn: sqlite3.Connection, limit: int) -> int:
    """How many KPI rows changed since shipped, counting up to ``limit`` (no rows fetched)."""
    if limit <= 0:
        return 0
    return int(conn.execute(f"SELECT count(*) FROM ({_KPI_CHANGED})", (limit,)).fetchone()[0])


def _kpis_changed(conn: sqlite3.Connection, limit: int) -> list[tuple]:
    """Up to ``limit`` KPI rows new or changed since they were last shipped, by (day, device).

    Only keys the DAG wrote since the export last looked (``kpi_dirty``) are compared;
    ``computed_ms`` plays no part, so a gateway clock that jumps neither holds nor
    repeats a row. Columns: day, device_id, the figures but site, site, computed_ms.
    """
    return conn.execute(_KPI_CHANGED, (max(0, limit),)).fetchall() if limit > 0 else []


def _ship_kpis(conn: sqlite3.Connection, seq: int, rows: list[tuple]) -> None:
    """In the reserve transaction: copy the rows into ``batch_kpis``, record them shipped."""
    figures = KPI_FIGURES[1:]
    conn.executemany(
        f"INSERT INTO batch_kpis (seq, day, device_id, {', '.join(figures)}, site, computed_ms)"
        f" VALUES ({', '.join('?' * (len(figures) + 5))})",
        [(seq, *r) for r in rows],
    )
    conn.executemany(
        f"INSERT INTO kpi_shipped (day, device_id, {', '.join(figures)}, site, seq)"
        f" VALUES ({', '.join('?' * (len(figures) + 4))}) ON CONFLICT (day, device_id) DO UPDATE"
        " SET " + ", ".join(f"{c} = excluded.{c}" for c in (*figures, "site", "seq")),
        [(*r[:-1], seq) for r in rows],
    )
    # keys looked at and now equal to what was shipped need no second look; rows left over
    # (a batch had no room for them) stay dirty for the next batch
    conn.execute(
        "DELETE FROM kpi_dirty WHERE EXISTS (SELECT 1 FROM kpis k JOIN kpi_shipped s"
        " ON s.day = k.day AND s.device_id = k.device_id WHERE k.day = kpi_dirty.day"
        " AND k.device_id = kpi_dirty.device_id AND "
        + " AND ".join(f"k.{c} IS s.{c}" for c in KPI_FIGURES) + ")"
        " OR NOT EXISTS (SELECT 1 FROM kpis k WHERE k.day = kpi_dirty.day"
        " AND k.device_id = kpi_dirty.device_id)"
    )  # fmt: skip


def _reserve(
    conn: sqlite3.Connection,
    gateway_id: str,
    outbox: Path,
    max_rows: int,
    now_ms: int,
    force_observations: bool,
) -> Reserved | None:
    upto = get_meta(conn, META_EXPORTED_UPTO)
    pieces = _pieces(conn)
    # changed KPI rows go first (few: a row per device and touched day), so they always
    # ride with the next batch; readings fill the rest of max_rows (observation pieces
    # come on top, as they always did)
    kpis = _kpis_changed(conn, max_rows)
    room = max_rows - len(kpis)
    last, readings = upto, 0
    if room > 0:
        # ids only grow and one process writes: every id <= max(id) is committed here
        row = conn.execute(
            "SELECT id FROM readings WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?", (upto, room - 1)
        ).fetchone()
        if row is not None:
            # the room-th id after the cursor: the batch holds exactly ``room`` readings,
            # which spares a second walk of the range to count them
            last, readings = int(row[0]), room
        else:  # fewer than ``room`` left: all of them, counted in one pass
            last, readings = conn.execute(
                "SELECT coalesce(max(id), ?), count(*) FROM readings WHERE id > ?", (upto, upto)
            ).fetchone()
            last, readings = max(int(last), upto), int(readings)
    # without readings: a full batch of KPI rows leaves at once, the rest wait their turn
    if last == upto and not (
        (pieces or kpis) and (room <= 0 or _obs_only_due(conn, now_ms, force_observations))
    ):
        return None
    from schemas.batch import batch_id  # the worker has pyarrow loaded anyway

    seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()[0]) + 1
    bid = batch_id(gateway_id, seq)
    path = outbox / f"{bid}.parquet"
    conn.execute(
        "INSERT INTO batches (seq, batch_id, first_id, last_id, readings, observations, path,"
        " state, created_ms) VALUES (?,?,?,?,?,?,?,'reserved',?)",
        (seq, bid, upto + 1, last, readings, len(pieces), str(path), now_ms),
    )
    conn.executemany(
        "INSERT INTO batch_observations (seq, start_ms, end_ms) VALUES (?,?,?)",
        [(seq, s, e) for _, s, e in pieces],
    )
    conn.executemany(
        "INSERT INTO obs_shipped (obs_id, upto_ms) VALUES (?, ?)"
        " ON CONFLICT (obs_id) DO UPDATE SET upto_ms = excluded.upto_ms",
        [(oid, e) for oid, _, e in pieces],
    )
    _ship_kpis(conn, seq, kpis)
    set_meta(conn, META_EXPORTED_UPTO, last)
    return Reserved(seq, bid, upto + 1, last, path)


def has_work(
    conn: sqlite3.Connection, now_ms: int, force_observations: bool, max_rows: int
) -> bool:
    """Whether an export run would write anything (the agent asks before starting a worker)."""
    try:
        if conn.execute("SELECT 1 FROM batches WHERE state = 'reserved' LIMIT 1").fetchone():
            return True
        upto = get_meta(conn, META_EXPORTED_UPTO)
        if conn.execute("SELECT 1 FROM readings WHERE id > ? LIMIT 1", (upto,)).fetchone():
            return True
        # as ``_reserve`` decides a batch without readings
        kpis = _kpis_changed_count(conn, max_rows)
        if not (kpis or _pieces(conn)):
            return False
        return kpis >= max_rows or _obs_only_due(conn, now_ms, force_observations)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the export cursor: {exc}") from exc


# -- 2. write (in the worker) --------------------------------------------------------------


def write_file(table: pa.Table, path: Path, gateway_id: str, seq: int) -> tuple[int, str]:
    """Write ``table`` to ``path`` durably (temp → fsync → rename → fsync dir); (bytes, sha256)."""
    import pyarrow.parquet as pq

    from schemas.batch import PARQUET_WRITE_OPTIONS, batch_metadata

    from .arrowio import parquet_encoding

    table = table.replace_schema_metadata(batch_metadata(gateway_id, seq))
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, **PARQUET_WRITE_OPTIONS, **parquet_encoding(table.schema))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fault_point("mid_rename")
        _fsync_dir(path.parent)
        digest, size = file_sha256(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ExportError(
            f"cannot write batch file {path}: {exc.strerror or exc}; check free space and "
            "permissions of data_dir"
        ) from exc
    return size, digest


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> tuple[str, int]:
    """(hex sha256, size) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# -- 3. mark (in the worker) -----------------------------------------------------------------


def mark(
    conn: sqlite3.Connection, b: Exported, now_ms: int, ts_range: tuple[int | None, int | None]
) -> None:
    """Commit the ``exported`` state of a written batch."""
    lo, hi = ts_range
    try:
        conn.execute(
            "UPDATE batches SET state = 'exported', sha256 = ?, bytes = ?, exported_ms = ?,"
            " readings = ?, observations = ?, min_ts_ms = ?, max_ts_ms = ?"
            " WHERE seq = ? AND state = 'reserved'",
            (b.sha256, b.bytes, now_ms, b.readings, b.observations, lo, hi, b.seq),
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot mark batch {b.batch_id} exported: {exc}") from exc


# -- the agent's side ------------------------------------------------------------------------


def export_pending(
    db_path: Path,
    conn: sqlite3.Connection,
    gateway_id: str,
    outbox: Path,
    max_rows: int,
    *,
    clock_ms: Callable[[], int] = wall_ms,
    force_observations: bool = False,
    max_batches: int = MAX_BATCHES_PER_RUN,
) -> list[Exported]:
    """Finish batches a crash left ``reserved``, then export new data; the batches written.

    ``conn`` only answers "is there work?": a worker process does the rest.
    """
    from .worker import spawn

    with outbox_lock(db_path.parent):
        if not has_work(conn, clock_ms(), force_observations, max_rows):
            return []
        args = ["export", "--db", str(db_path), "--gateway", gateway_id, "--outbox",
                str(outbox), "--max-rows", str(max_rows), "--max-batches", str(max_batches),
                "--now-ms", str(clock_ms())]  # fmt: skip
        if force_observations:
            args.append("--force-observations")
        answer = spawn(args, ExportError, "export")
    done = [Exported(**{**b, "path": Path(b["path"])}) for b in answer["batches"]]
    for b in done:
        log.info("exported %s: %d readings, %d observation intervals, %d KPI rows, %d bytes",
                 b.batch_id, b.readings, b.observations, b.kpis, b.bytes)  # fmt: skip
    return done


def rebuild(db_path: Path, conn: sqlite3.Connection, gateway_id: str, seq: int) -> str:
    """Write an exported batch's file again (it went missing); its new sha256."""
    from .worker import spawn

    if conn.execute("SELECT 1 FROM batches WHERE seq = ?", (seq,)).fetchone() is None:
        raise ExportError(f"no batch with sequence {seq} in the buffer")
    with outbox_lock(db_path.parent):
        args = ["rebuild", "--db", str(db_path), "--gateway", gateway_id, "--seq", str(seq)]
        answer = spawn(args, ExportError, "rebuild")
    return str(answer["sha256"])
