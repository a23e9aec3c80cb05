"""Bounded disk: buffer + WAL + outbox within ``[storage] max_disk_bytes``; retention pruning.

Usage counts the SQLite pages in use (free pages are reused by new rows, so a file that
does not shrink after deletes is not "full"), the WAL and every outbox file. When usage
reaches the budget:

- ``backpressure`` (default): first uploaded readings are pruned early (central has
  them); if that is not enough the alarm is raised and ingest stops committing and
  acknowledging, so the broker keeps the messages (its queue for our session) until
  usage falls below ``RESUME_RATIO`` of the budget;
- ``drop_oldest``: uploaded readings first, then the oldest not-uploaded batches and
  readings are deleted until usage is below ``RESUME_RATIO``; every dropped reading is
  counted (``meta.dropped_rows``, metric ``fleetpulse_agent_dropped_rows_total``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .buffer import META_DROPPED_ROWS, META_EXPORTED_UPTO, get_meta, set_meta
from .config import AgentConfig
from .errors import StoreError
from .export import OUTBOX_LOCK

log = logging.getLogger(__name__)

# Ingest resumes (and drop_oldest stops dropping) below this share of the budget: the gap
# keeps the alarm from flapping on every commit.
RESUME_RATIO = 0.9
# Rows deleted per transaction, so ingest's commits interleave with a big prune.
DELETE_CHUNK = 20_000


@dataclass(frozen=True)
class Usage:
    """Bytes the agent holds on disk."""

    db_pages: int
    wal: int
    outbox: int

    @property
    def total(self) -> int:
        return self.db_pages + self.wal + self.outbox


def usage(conn: sqlite3.Connection, db_path: Path, outbox: Path) -> Usage:
    """Current usage (pages in use, WAL file, outbox files)."""
    try:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot measure the buffer {db_path}: {exc}") from exc
    wal = 0
    with contextlib.suppress(FileNotFoundError):
        wal = db_path.with_name(db_path.name + "-wal").stat().st_size
    files = 0
    if outbox.is_dir():
        for p in outbox.iterdir():
            with contextlib.suppress(FileNotFoundError):
                files += p.stat().st_size
    return Usage((pages - free) * page, wal, files)


def prune_uploaded(conn: sqlite3.Connection, before_ms: int | None) -> int:
    """Delete readings of batches uploaded before ``before_ms`` (None: all); rows deleted."""
    where = "state = 'uploaded'" + ("" if before_ms is None else " AND uploaded_ms < ?")
    args: tuple[int, ...] = () if before_ms is None else (before_ms,)
    deleted = 0
    with OUTBOX_LOCK:
        ranges = conn.execute(
            f"SELECT first_id, last_id FROM batches WHERE {where} AND readings > 0 ORDER BY seq",
            args,
        ).fetchall()
        for first, last in ranges:
            deleted += _delete_ids(conn, first, last)
        # the batch rows are kept (a small history); mark their readings gone
        conn.execute(f"UPDATE batches SET readings = 0 WHERE {where}", args)
    return deleted


def _delete_ids(conn: sqlite3.Connection, first: int, last: int) -> int:
    deleted = 0
    lo = first
    while lo <= last:
        hi = min(last, lo + DELETE_CHUNK - 1)
        try:
            deleted += conn.execute(
                "DELETE FROM readings WHERE id BETWEEN ? AND ?", (lo, hi)
            ).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prune readings: {exc}") from exc
        lo = hi + 1
    return deleted


def prune_quarantine(conn: sqlite3.Connection, before_ms: int) -> int:
    """Quarantined messages older than the retention (they are counted in metrics)."""
    return conn.execute("DELETE FROM quarantine WHERE received_ms < ?", (before_ms,)).rowcount


def drop_oldest(conn: sqlite3.Connection, rows: int) -> int:
    """Drop about ``rows`` of the oldest not-uploaded readings; rows dropped (counted)."""
    dropped = 0
    with OUTBOX_LOCK:
        # whole exported or flagged batches first: their files go too
        for seq, first, last, path in conn.execute(
            "SELECT seq, first_id, last_id, path FROM batches"
            " WHERE state IN ('exported', 'flagged') ORDER BY seq"
        ).fetchall():
            if dropped >= rows:
                break
            n = _delete_ids(conn, first, last)
            conn.execute(
                "UPDATE batches SET state = 'dropped', last_error = ? WHERE seq = ?",
                (f"dropped by on_full = drop_oldest ({n} readings)", seq),
            )
            with contextlib.suppress(OSError):
                Path(path).unlink()
            dropped += n
        if dropped < rows:
            # not exported yet: the oldest ids (never inside a reserved range: none exists
            # while we hold the lock)
            upto = get_meta(conn, META_EXPORTED_UPTO)
            ids = conn.execute(
                "SELECT id FROM readings WHERE id > ? ORDER BY id LIMIT ?", (upto, rows - dropped)
            ).fetchall()
            if ids:
                dropped += _delete_ids(conn, ids[0][0], ids[-1][0])
        set_meta(conn, META_DROPPED_ROWS, get_meta(conn, META_DROPPED_ROWS) + dropped)
    if dropped:
        log.warning("disk budget reached: dropped the %d oldest not-uploaded readings", dropped)
    return dropped


class DiskGuard:
    """Checks the budget; ``full`` (an Event) tells ingest to hold its commits and acks."""

    def __init__(self, cfg: AgentConfig, conn: sqlite3.Connection) -> None:
        self.cfg = cfg
        self.conn = conn
        self.full = threading.Event()
        self.last_usage: Usage | None = None

    def check(self, now_ms: int) -> Usage:
        """Prune by retention, enforce the budget, raise or clear the alarm."""
        st = self.cfg.storage
        budget = st.max_disk_bytes
        retention_ms = int(st.retention_hours * 3_600_000)
        prune_uploaded(self.conn, now_ms - retention_ms)
        prune_quarantine(self.conn, now_ms - retention_ms)
        u = usage(self.conn, self.cfg.db_path, self.cfg.outbox)
        over = u.total >= budget or (self.full.is_set() and u.total >= budget * RESUME_RATIO)
        # central has every uploaded reading: those go first whatever the retention
        if over and prune_uploaded(self.conn, None):
            self._checkpoint()
            u = usage(self.conn, self.cfg.db_path, self.cfg.outbox)
        if st.on_full == "drop_oldest":
            rounds = 0
            while u.total >= budget * RESUME_RATIO and rounds < 20:
                rows = self._rows_for(u.total - int(budget * RESUME_RATIO * 0.95))
                if drop_oldest(self.conn, rows) == 0:
                    break
                self._checkpoint()
                u = usage(self.conn, self.cfg.db_path, self.cfg.outbox)
                rounds += 1
        if u.total >= budget and not self.full.is_set():
            self.full.set()
            log.error(
                "disk budget reached: %d of [storage] max_disk_bytes = %d bytes in use; "
                "ingest holds its acknowledgements (the broker keeps the messages) until "
                "uploads free space — raise max_disk_bytes or fix the upload",
                u.total,
                budget,
            )
        elif self.full.is_set() and u.total < budget * RESUME_RATIO:
            self.full.clear()
            log.info("disk usage %d bytes is below the budget again: ingest resumes", u.total)
        self.last_usage = u
        return u

    def _rows_for(self, excess: int) -> int:
        n = self.conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        used = usage(self.conn, self.cfg.db_path, self.cfg.outbox).db_pages
        per_row = max(1, used // max(1, n))
        return max(100, excess // per_row + 1)

    def _checkpoint(self) -> None:
        # a WAL that grew during a burst keeps its size until truncated
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
