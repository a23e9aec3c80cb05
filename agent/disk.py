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

Between the periodic checks (``disk_check_s``) ingest could write past the budget for a
whole period. So each check also measures the headroom left and the bytes a committed
row costs (pages in use per row, or the usage growth per row since the last check,
whichever is larger), and ingest calls ``note_commit(rows)`` after every COMMIT: an
integer addition and a comparison, no stat() and no query. When the rows since the
check could have used half the headroom, a check runs at once on a short-lived thread;
under ``backpressure``, when they could have used all of it, ingest holds (``full``) until
that check has measured — it lets go at once if there was room after all.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
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
# The commit counter: a check runs once the rows committed since the last one could have
# used this share of the headroom it measured (ingest holds at all of it).
EARLY_CHECK_SHARE = 0.5
# Bytes a row is assumed to cost while the buffer holds too few rows to tell (the WAL
# frames of small commits make the first rows dear), and the bounds of the estimate.
DEFAULT_ROW_BYTES = 1024
MIN_ROW_BYTES = 64
MAX_ROW_BYTES = 64 * 1024
ESTIMATE_MIN_ROWS = 1000
NEVER = 1 << 62


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
        # the batch rows are kept (a small history); mark their readings gone. Their KPI
        # copies go too: only a rebuild reads them, and an uploaded batch is never rebuilt
        conn.execute(f"UPDATE batches SET readings = 0 WHERE {where}", args)
        conn.execute(f"DELETE FROM batch_kpis WHERE seq IN (SELECT seq FROM batches WHERE {where})",
                     args)  # fmt: skip
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


def _unship_kpis(conn: sqlite3.Connection, seq: int) -> None:
    """A dropped batch's KPI rows never reach central: where it was the last to ship a row,
    forget that it did (the next batch ships the row's current figures); drop the copy."""
    conn.execute(
        "INSERT OR IGNORE INTO kpi_dirty (day, device_id)"
        " SELECT day, device_id FROM kpi_shipped WHERE seq = ?",
        (seq,),
    )
    conn.execute("DELETE FROM kpi_shipped WHERE seq = ?", (seq,))
    conn.execute("DELETE FROM batch_kpis WHERE seq = ?", (seq,))


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
            _unship_kpis(conn, seq)
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
        self._alarm = False  # the budget is reached (``full`` may also be a counter's hold)
        self._lock = threading.Lock()  # one check at a time (scheduler or counter)
        # the commit counter: written by ingest only (note_commit); thresholds by checks
        self.committed = 0
        self._check_at = NEVER
        self._hold_at = NEVER
        self._kicked = False
        self._base_rows = 0
        self._base_total: int | None = None
        self._clock_offset_ms = 0.0
        self.early_checks = 0
        self.row_bytes: float = DEFAULT_ROW_BYTES

    # -- the ingest thread's side --------------------------------------------------------

    def note_commit(self, rows: int) -> None:
        """Ingest committed ``rows`` (readings + quarantined): check early if they may fill."""
        n = self.committed + rows
        self.committed = n
        # the hold first: a check started before it could finish, find room and leave the
        # hold set after it, and ingest would wait for the next periodic check
        if n >= self._hold_at and not self.full.is_set():
            self.full.set()  # until the check has measured: it lets go if there is room
        if n >= self._check_at and not self._kicked:
            self._kicked = True
            threading.Thread(target=self._early_check, name="fleetpulse-disk", daemon=True).start()

    def _early_check(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a check is running: it re-arms the counter when done
        try:
            self.early_checks += 1
            self._check(int(time.monotonic() * 1000 + self._clock_offset_ms))
        except Exception as exc:  # the periodic check reports; ingest must not stop here
            if not self._alarm:
                self.full.clear()
            self._kicked = False
            log.error("early disk check failed: %s", exc)
        finally:
            self._lock.release()

    # -- checks ---------------------------------------------------------------------------

    def check(self, now_ms: int) -> Usage:
        """Prune by retention, enforce the budget, raise or clear the alarm."""
        with self._lock:
            self._clock_offset_ms = now_ms - time.monotonic() * 1000
            return self._check(now_ms)

    def _check(self, now_ms: int) -> Usage:
        st = self.cfg.storage
        budget = st.max_disk_bytes
        rows_at_start = self.committed  # rows committed later count against the next check
        retention_ms = int(st.retention_hours * 3_600_000)
        prune_uploaded(self.conn, now_ms - retention_ms)
        prune_quarantine(self.conn, now_ms - retention_ms)
        u = usage(self.conn, self.cfg.db_path, self.cfg.outbox)
        over = u.total >= budget or (self._alarm and u.total >= budget * RESUME_RATIO)
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
        if u.total >= budget and not self._alarm:
            self._alarm = True
            self.full.set()
            log.error(
                "disk budget reached: %d of [storage] max_disk_bytes = %d bytes in use; "
                "ingest holds its acknowledgements (the broker keeps the messages) until "
                "uploads free space — raise max_disk_bytes or fix the upload",
                u.total,
                budget,
            )
        elif self._alarm and u.total < budget * RESUME_RATIO:
            self._alarm = False
            self.full.clear()
            log.info("disk usage %d bytes is below the budget again: ingest resumes", u.total)
        elif not self._alarm and self.full.is_set():
            self.full.clear()  # the counter's hold: there was room after all
        self.last_usage = u
        self._arm(rows_at_start, u)
        return u

    def _arm(self, rows: int, u: Usage) -> None:
        """Thresholds of the commit counter from this check's usage and cost per row."""
        budget = self.cfg.storage.max_disk_bytes
        per_row = self._pages_per_row(u)
        grown_rows = rows - self._base_rows
        if self._base_total is None:  # no history yet: assume a dear row
            per_row = max(per_row, DEFAULT_ROW_BYTES)
            self._base_rows, self._base_total = rows, u.total
        elif grown_rows >= ESTIMATE_MIN_ROWS:  # usage growth per row: pages and WAL frames
            per_row = max(per_row, (u.total - self._base_total) / grown_rows)
            self._base_rows, self._base_total = rows, u.total
        else:  # too few rows to tell: keep the last estimate (and the base)
            per_row = max(per_row, self.row_bytes)
        self.row_bytes = per_row = min(MAX_ROW_BYTES, max(MIN_ROW_BYTES, per_row))
        headroom = max(0, budget - u.total)
        self._check_at = rows + max(1, int(headroom * EARLY_CHECK_SHARE / per_row))
        hold = self.cfg.storage.on_full == "backpressure"
        self._hold_at = rows + max(1, int(headroom / per_row)) if hold else NEVER
        self._kicked = False

    def _pages_per_row(self, u: Usage) -> float:
        # ids only grow and the oldest go first: max - min + 1 is the live rows, O(log n)
        try:
            live = sum(
                (hi - lo + 1) if hi is not None else 0
                for lo, hi in (
                    self.conn.execute(f"SELECT min(id), max(id) FROM {t}").fetchone()
                    for t in ("readings", "quarantine")
                )
            )
        except sqlite3.Error:
            return DEFAULT_ROW_BYTES
        return DEFAULT_ROW_BYTES if live < ESTIMATE_MIN_ROWS else u.db_pages / live

    def _rows_for(self, excess: int) -> int:
        n = self.conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        used = usage(self.conn, self.cfg.db_path, self.cfg.outbox).db_pages
        per_row = max(1, used // max(1, n))
        return max(100, excess // per_row + 1)

    def _checkpoint(self) -> None:
        # a WAL that grew during a burst keeps its size until truncated
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
