"""Export: new readings and observation pieces → one Parquet batch in the outbox, exactly once.

Protocol (each step durable before the next):

1. **reserve**, one SQLite transaction: the next sequence number, the reading id range
   ``(exported_upto, last_id]``, the observation pieces not shipped yet; the ``batches``
   row (state ``reserved``) and the advanced cursors commit together;
2. **write** the file: temp → fsync → rename → fsync(dir);
3. **mark** the row ``exported`` with its sha256 and size.

A crash after 1 leaves a ``reserved`` row: the next run writes the file again from the
recorded range and pieces (the content depends only on them, the sequence and the
registry). No upload ever reads a ``reserved`` batch, so its id has never reached central
with other content. pyarrow is imported only here (and in the DAG), never by ingest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .buffer import META_EXPORTED_UPTO, get_meta, set_meta
from .errors import ExportError, StoreError
from .faults import fault_point

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# Observation-only batches (no new readings) leave at most this often: without them a
# silent fleet's "observed" time would never reach central, with them every minute an
# idle gateway would send a trickle of tiny files.
OBS_ONLY_EVERY_MS = 15 * 60 * 1000
# Batches written per export run at most, so one run never holds the outbox lock for long.
MAX_BATCHES_PER_RUN = 50

# Export, retention and drop_oldest touch the same rows and files: one at a time.
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


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# -- 1. reserve -------------------------------------------------------------------------


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


def _reserve(
    conn: sqlite3.Connection,
    gateway_id: str,
    outbox: Path,
    max_rows: int,
    now_ms: int,
    force_observations: bool,
) -> Reserved | None:
    upto = get_meta(conn, META_EXPORTED_UPTO)
    # ids only grow and one process writes: every id <= max(id) is committed in this snapshot
    row = conn.execute(
        "SELECT id FROM readings WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?", (upto, max_rows - 1)
    ).fetchone()
    last = int(row[0]) if row else int(conn.execute(
        "SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])  # fmt: skip
    last = max(last, upto)
    pieces = [
        (oid, max(start, shipped if shipped is not None else start), end)
        for oid, start, end, shipped in conn.execute(
            "SELECT o.id, o.start_ms, coalesce(o.end_ms, o.alive_ms), s.upto_ms"
            " FROM observations o LEFT JOIN obs_shipped s ON s.obs_id = o.id"
            " WHERE coalesce(o.end_ms, o.alive_ms) > coalesce(s.upto_ms, o.start_ms)"
            " ORDER BY o.id"
        )
    ]
    pieces = [p for p in pieces if p[2] > p[1]]
    if last == upto:
        if not pieces:
            return None
        latest = conn.execute("SELECT max(created_ms) FROM batches").fetchone()[0]
        if not force_observations and latest is not None and now_ms - latest < OBS_ONLY_EVERY_MS:
            return None
    from schemas.batch import batch_id  # pyarrow: loaded by the first export, not by ingest

    seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()[0]) + 1
    bid = batch_id(gateway_id, seq)
    path = outbox / f"{bid}.parquet"
    count_sql = "SELECT count(*) FROM readings WHERE id > ? AND id <= ?"
    readings = int(conn.execute(count_sql, (upto, last)).fetchone()[0])
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
    set_meta(conn, META_EXPORTED_UPTO, last)
    return Reserved(seq, bid, upto + 1, last, path)


# -- 2. build and write -------------------------------------------------------------------


def build_table(
    db_path: Path,
    conn: sqlite3.Connection,
    gateway_id: str,
    seq: int,
    first_id: int,
    last_id: int,
) -> pa.Table:
    """The batch's rows (BATCH_SCHEMA, readings then observations), from the buffer."""
    import pyarrow as pa

    from . import arrowio
    from .registry import locations

    raw = arrowio.read_readings(conn, first_id, last_id)
    obs = conn.execute(
        "SELECT start_ms, end_ms FROM batch_observations WHERE seq = ? ORDER BY start_ms, end_ms",
        (seq,),
    ).fetchall()
    readings = arrowio.to_batch_rows(raw, gateway_id, locations(conn))
    observations = arrowio.observation_rows(gateway_id, obs)
    return pa.concat_tables([readings, observations])


def write_file(table: pa.Table, path: Path, gateway_id: str, seq: int) -> tuple[int, str]:
    """Write ``table`` to ``path`` durably (temp → fsync → rename → fsync dir); (bytes, sha256)."""
    import pyarrow.parquet as pq

    from schemas.batch import PARQUET_WRITE_OPTIONS, batch_metadata

    table = table.replace_schema_metadata(batch_metadata(gateway_id, seq))
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, **PARQUET_WRITE_OPTIONS)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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


# -- 3. mark, and the whole step -------------------------------------------------------------


def _write_and_mark(
    db_path: Path, conn: sqlite3.Connection, gateway_id: str, r: Reserved, now_ms: int
) -> Exported:
    fault_point("after_reserve_before_write")
    table = build_table(db_path, conn, gateway_id, r.seq, r.first_id, r.last_id)
    import pyarrow.compute as pc

    from schemas.batch import RECORD_READING

    readings = table.filter(pc.equal(table["record_type"], RECORD_READING))
    ts = readings["ts"]
    lo = pc.min(ts).value if readings.num_rows else None
    hi = pc.max(ts).value if readings.num_rows else None
    size, digest = write_file(table, r.path, gateway_id, r.seq)
    fault_point("after_export_before_mark")
    try:
        conn.execute(
            "UPDATE batches SET state = 'exported', sha256 = ?, bytes = ?, exported_ms = ?,"
            " readings = ?, observations = ?, min_ts_ms = ?, max_ts_ms = ?"
            " WHERE seq = ? AND state = 'reserved'",
            (digest, size, now_ms, readings.num_rows, table.num_rows - readings.num_rows,
             _ms(lo), _ms(hi), r.seq),
        )  # fmt: skip
    except sqlite3.Error as exc:
        raise StoreError(f"cannot mark batch {r.batch_id} exported: {exc}") from exc
    return Exported(
        r.seq, r.batch_id, readings.num_rows, table.num_rows - readings.num_rows, size, digest,
        r.path,
    )  # fmt: skip


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


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
    """Finish batches a crash left ``reserved``, then export new data; the batches written."""
    done: list[Exported] = []
    with OUTBOX_LOCK:
        stale = conn.execute(
            "SELECT seq, batch_id, first_id, last_id, path FROM batches"
            " WHERE state = 'reserved' ORDER BY seq"
        ).fetchall()
        for seq, bid, first, last, path in stale:
            log.warning("batch %s was reserved but not written (crash?): writing it now", bid)
            stale_batch = Reserved(seq, bid, first, last, Path(path))
            done.append(_write_and_mark(db_path, conn, gateway_id, stale_batch, clock_ms()))
        while len(done) < max_batches:
            r = reserve(conn, gateway_id, outbox, max_rows, clock_ms(),
                        force_observations=force_observations)  # fmt: skip
            if r is None:
                break
            force_observations = False
            done.append(_write_and_mark(db_path, conn, gateway_id, r, clock_ms()))
    if done:
        import pyarrow as pa

        # give the batch's buffers back to the OS: a gateway has little memory to spare
        pa.default_memory_pool().release_unused()
    for b in done:
        log.info("exported %s: %d readings, %d observation intervals, %d bytes",
                 b.batch_id, b.readings, b.observations, b.bytes)  # fmt: skip
    return done


def rebuild(db_path: Path, conn: sqlite3.Connection, gateway_id: str, seq: int) -> str:
    """Write an exported batch's file again (it went missing); its new sha256."""
    row = conn.execute(
        "SELECT batch_id, first_id, last_id, path FROM batches WHERE seq = ?", (seq,)
    ).fetchone()
    if row is None:
        raise ExportError(f"no batch with sequence {seq} in the buffer")
    _, first, last, path = row
    with OUTBOX_LOCK:
        table = build_table(db_path, conn, gateway_id, seq, first, last)
        _, digest = write_file(table, Path(path), gateway_id, seq)
    return digest
