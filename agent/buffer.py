"""The agent's durable buffer: readings, quarantine and observation intervals in SQLite.

One writer (the ingest loop) commits in batches; readers (``agent status``, the later
export) use their own connections, which WAL mode lets run while the writer works.

Tables (schema version in ``PRAGMA user_version``):

- ``readings``: one row per distinct reading; ``id`` only ever grows (AUTOINCREMENT, so a
  deleted tail is never reused) and is the cursor the export follows; the unique key is
  DESIGN §3's dedup key ordered time first, so ``INSERT OR IGNORE`` drops redeliveries and
  batched inserts stay append-like.
- ``quarantine``: messages that broke the contract: topic, first 4 KiB, size, reason.
- ``observations``: intervals ``[start_ms, end_ms)`` when the agent was connected and
  subscribed; an open interval has ``end_ms`` NULL and its ``alive_ms`` moves with every
  commit, so after a crash it is closed at the last instant it was known to be true.
- ``meta``: small state: ``uploaded_upto`` (every reading with a lower or equal id is in
  an uploaded batch), ``exported_upto`` (the export cursor), ``dag_upto`` (the DAG's
  cursor), ``dropped_rows`` (``on_full = "drop_oldest"``), ``registry_mtime_ns``.
- v2: ``batches`` (the outbox ledger: one row per batch, reserved before its file is
  written), ``batch_observations`` (the observation pieces a batch carries),
  ``obs_shipped`` (how far each observation interval was shipped), ``devices`` (the
  registry cache), ``kpis`` (the local per device-day view).
- v3: ``kpi_shipped`` (per ``(day, device_id)`` the figures last put in a batch, and that
  batch's ``seq``), ``batch_kpis`` (the KPI rows a batch carries, copied when it is
  reserved, so a crash or a rebuild writes the same bytes) and ``kpi_dirty`` (the
  ``(day, device_id)`` keys written to ``kpis`` since the export last looked, filled by a
  trigger in the DAG's own transaction: the export compares only those with
  ``kpi_shipped`` instead of the whole history). A v2 buffer is upgraded in place: the
  tables are added and every existing ``kpis`` row is marked dirty (never shipped).
- v4: ``readings.metric_keys`` and ``readings.metric_vals``: a reading's metrics packed
  so the export reads them without parsing JSON (``pack_metrics``): the names in their
  order joined by ``METRIC_SEP`` (a fleet has few distinct name lists, so the export
  handles each list once) and the values as little-endian float64, 8 bytes each, in the
  same order. ``metrics`` (JSON text) is left NULL then; it still holds the metrics of
  rows written before the upgrade, and of the rare reading whose metric names cannot be
  packed (a name holding ``METRIC_SEP``, an empty object). A v3 buffer gains the two
  columns in place (``ALTER TABLE``); its rows keep their JSON and export as before.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import StoreError, StoreMissing

if TYPE_CHECKING:  # the export worker imports this module: no pydantic for it
    from schemas import Reading

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
QUARANTINE_KEEP_BYTES = 4096
# Meta key of the upload cursor: readings with id <= this value are uploaded.
META_UPLOADED_UPTO = "uploaded_upto"
META_EXPORTED_UPTO = "exported_upto"
META_DAG_UPTO = "dag_upto"
META_DROPPED_ROWS = "dropped_rows"
META_REGISTRY_MTIME = "registry_mtime_ns"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    state TEXT,
    event_type TEXT,
    fw TEXT,
    lat REAL,
    lon REAL,
    metrics TEXT,
    detail TEXT,
    metric_keys TEXT,
    metric_vals BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS readings_key ON readings (ts_ms, device_id, kind, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_bytes INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,
    alive_ms INTEGER NOT NULL,
    closed_by TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('uploaded_upto', 0);
-- v2: export, upload, registry cache, local KPIs (agent/export.py, upload.py, dag.py)
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    observations INTEGER NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    sha256 TEXT,
    bytes INTEGER,
    min_ts_ms INTEGER,
    max_ts_ms INTEGER,
    created_ms INTEGER NOT NULL,
    exported_ms INTEGER,
    uploaded_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    http_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS batches_state ON batches (state, seq);
CREATE TABLE IF NOT EXISTS batch_observations (
    seq INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_observations_seq ON batch_observations (seq);
CREATE TABLE IF NOT EXISTS obs_shipped (
    obs_id INTEGER PRIMARY KEY,
    upto_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    lat REAL,
    lon REAL,
    heartbeat_s REAL NOT NULL,
    gap_k REAL,
    commissioned_at TEXT,
    decommissioned_at TEXT
);
CREATE TABLE IF NOT EXISTS kpis (
    day TEXT NOT NULL,
    device_id TEXT NOT NULL,
    site TEXT,
    heartbeat_s REAL NOT NULL,
    eligible_s REAL NOT NULL,
    up_s REAL NOT NULL,
    down_s REAL NOT NULL,
    unknown_s REAL NOT NULL,
    device_uptime REAL,
    connectivity_ratio REAL,
    slots_counted INTEGER NOT NULL,
    slots_holding INTEGER NOT NULL,
    computed_ms INTEGER NOT NULL,
    PRIMARY KEY (day, device_id)
);
-- v3: the local KPI rows travel in the batches (agent/export.py)
CREATE TABLE IF NOT EXISTS kpi_shipped (
    day TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    site TEXT,
    eligible_s REAL NOT NULL,
    up_s REAL NOT NULL,
    down_s REAL NOT NULL,
    unknown_s REAL NOT NULL,
    device_uptime REAL,
    connectivity_ratio REAL,
    slots_counted INTEGER NOT NULL,
    slots_holding INTEGER NOT NULL,
    PRIMARY KEY (day, device_id)
);
CREATE TABLE IF NOT EXISTS batch_kpis (
    seq INTEGER NOT NULL,
    day TEXT NOT NULL,
    device_id TEXT NOT NULL,
    site TEXT,
    eligible_s REAL NOT NULL,
    up_s REAL NOT NULL,
    down_s REAL NOT NULL,
    unknown_s REAL NOT NULL,
    device_uptime REAL,
    connectivity_ratio REAL,
    slots_counted INTEGER NOT NULL,
    slots_holding INTEGER NOT NULL,
    computed_ms INTEGER NOT NULL,
    PRIMARY KEY (seq, day, device_id)
);
CREATE TABLE IF NOT EXISTS kpi_dirty (
    day TEXT NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (day, device_id)
) WITHOUT ROWID;
-- INSERT OR REPLACE (agent/dag.py) fires the insert trigger; an update is covered too
CREATE TRIGGER IF NOT EXISTS kpis_dirty_insert AFTER INSERT ON kpis BEGIN
    INSERT OR IGNORE INTO kpi_dirty (day, device_id) VALUES (NEW.day, NEW.device_id);
END;
CREATE TRIGGER IF NOT EXISTS kpis_dirty_update AFTER UPDATE ON kpis BEGIN
    INSERT OR IGNORE INTO kpi_dirty (day, device_id) VALUES (NEW.day, NEW.device_id);
END;
INSERT OR IGNORE INTO meta (key, value) VALUES ('exported_upto', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dag_upto', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped_rows', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('registry_mtime_ns', 0);
"""

_V3_BACKFILL = "INSERT OR IGNORE INTO kpi_dirty (day, device_id) SELECT day, device_id FROM kpis;"
# v3 → v4: the packed metrics columns, at the end as a new file's CREATE TABLE has them
_V4_COLUMNS = (("metric_keys", "TEXT"), ("metric_vals", "BLOB"))
# Between the metric names in ``readings.metric_keys`` (ASCII unit separator).
METRIC_SEP = "\x1f"
_BIG_ENDIAN = sys.byteorder == "big"

_INSERT_READING = (
    "INSERT OR IGNORE INTO readings (ts_ms, device_id, kind, seq, site, received_ms, state,"
    " event_type, fw, lat, lon, metrics, detail, metric_keys, metric_vals)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_QUARANTINE = (
    "INSERT INTO quarantine (received_ms, topic, payload, payload_bytes, reason) VALUES (?,?,?,?,?)"
)

Row = tuple[
    int, str, str, int, str, int, str | None, str | None, str | None,
    float | None, float | None, str | None, str | None, str | None, bytes | None,
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A message that broke the contract, as the quarantine table keeps it."""

    received_ms: int
    topic: str
    payload: bytes
    payload_bytes: int
    reason: str

    @classmethod
    def of(cls, received_ms: int, topic: str, payload: bytes, reason: str) -> Quarantined:
        return cls(received_ms, topic, payload[:QUARANTINE_KEEP_BYTES], len(payload), reason)


def pack_metrics(metrics: dict[str, float]) -> tuple[str, bytes] | None:
    """``(metric_keys, metric_vals)`` of a metrics object, or None when it cannot be packed.

    Names in the object's order joined by ``METRIC_SEP``; values as little-endian float64
    in the same order. An empty object (no names to join: it would read back as one name
    ``""``) and a name holding the separator are not packed: those keep the JSON text.
    """
    keys = METRIC_SEP.join(metrics)
    if keys.count(METRIC_SEP) != len(metrics) - 1:
        return None
    vals = array("d", metrics.values())
    if _BIG_ENDIAN:
        vals.byteswap()
    return keys, vals.tobytes()


def reading_row(r: Reading) -> Row:
    """The column values of one reading, in ``_INSERT_READING`` order."""
    metrics = r.metrics
    text = keys = vals = None
    if metrics is not None:
        packed = pack_metrics(metrics)
        if packed is None:
            text = json.dumps(metrics, separators=(",", ":"))
        else:
            keys, vals = packed
    return (
        r.ts_ms, r.device_id, r.kind, r.seq, r.site, r.received_ms, r.state,
        r.event_type, r.fw, r.lat, r.lon, text, r.detail, keys, vals,
    )  # fmt: skip


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit BEGIN/COMMIT below.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode ({mode}); use a local disk")
        # FULL: a COMMIT survives power loss, which is what lets us PUBACK after it.
        conn.execute("PRAGMA synchronous = FULL")
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open the buffer {path}: {exc}; check data_dir") from exc
    return conn


def _add_packed_columns(conn: sqlite3.Connection) -> None:
    """v3 → v4 in place: add the packed metrics columns ``readings`` lacks (one transaction).

    ``ALTER TABLE ... ADD COLUMN`` has no ``IF NOT EXISTS``: the columns are looked up again
    under the write lock, so two processes opening an old buffer at once add them once.
    The version is raised after this, by the set-up script: a crash in between leaves a
    v3 file with the columns, which the next open takes as it is.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(readings)")}
        for name, decl in _V4_COLUMNS:
            if have and name not in have:
                conn.execute(f"ALTER TABLE readings ADD COLUMN {name} {decl}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class Buffer:
    """The single writer of the agent's SQLite buffer."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, busy_timeout_ms: int = 5000) -> Buffer:
        """Open (creating if needed) the buffer at ``path`` and bring its schema up to date."""
        conn = _connect(path, busy_timeout_ms)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} has buffer schema {version}, newer than this agent's "
                    f"{SCHEMA_VERSION}: upgrade fleetpulse or point data_dir elsewhere"
                )
            # IMMEDIATE: take the write lock up front, waiting on the busy timeout; a plain
            # BEGIN reads first and then fails at once with "database is locked" when another
            # process (the running agent, its worker) commits before the upgrade to a write
            if 0 < version < 4:
                _add_packed_columns(conn)
            # v2 → v3: KPI rows computed before the upgrade were never shipped
            upgrade = _V3_BACKFILL if 0 < version < 3 else ""
            conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} {upgrade} PRAGMA user_version = {SCHEMA_VERSION};"
                " COMMIT;"
            )
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot set up the buffer {path}: {exc}") from exc
        return cls(conn, path)

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for the agent's other stages (export, upload, DAG) on this thread."""
        return self._conn

    def close(self) -> None:
        self._conn.close()

    def write(
        self,
        readings: Sequence[Reading],
        quarantined: Sequence[Quarantined] = (),
        alive: tuple[int, int] | None = None,
    ) -> int:
        """Store one batch in one transaction (durable on return); the count of new readings.

        ``alive`` is ``(interval_id, now_ms)``: the open observation interval was still true
        at ``now_ms``, recorded in the same COMMIT at no extra cost.
        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                if readings:
                    conn.executemany(_INSERT_READING, map(reading_row, readings))
                inserted = conn.total_changes - before
                if quarantined:
                    conn.executemany(
                        _INSERT_QUARANTINE,
                        (
                            (q.received_ms, q.topic, q.payload, q.payload_bytes, q.reason)
                            for q in quarantined
                        ),
                    )
                if alive is not None:
                    conn.execute(
                        "UPDATE observations SET alive_ms = max(alive_ms, ?) WHERE id = ?",
                        (alive[1], alive[0]),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the buffer {self.path}: {exc}") from exc
        return inserted

    def open_interval(self, start_ms: int) -> int:
        """Record that the agent is connected and subscribed from ``start_ms``; its id."""
        try:
            cur = self._conn.execute(
                "INSERT INTO observations (start_ms, alive_ms) VALUES (?, ?)", (start_ms, start_ms)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the buffer {self.path}: {exc}") from exc
        assert cur.lastrowid is not None
        return cur.lastrowid

    def close_interval(self, interval_id: int, end_ms: int, closed_by: str) -> None:
        """End an open observation interval at ``end_ms`` (disconnect or shutdown)."""
        try:
            self._conn.execute(
                "UPDATE observations SET end_ms = max(start_ms, ?), alive_ms = max(alive_ms, ?),"
                " closed_by = ? WHERE id = ? AND end_ms IS NULL",
                (end_ms, end_ms, closed_by, interval_id),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the buffer {self.path}: {exc}") from exc

    def recover_intervals(self) -> int:
        """Close intervals a killed agent left open at their last ``alive_ms``; how many.

        The agent is known to have been connected and subscribed at ``alive_ms`` (it
        committed then) and nothing is known after it, so ending there never overstates
        observed time; the gap becomes "unknown", never "down".
        """
        try:
            cur = self._conn.execute(
                "UPDATE observations SET end_ms = alive_ms, closed_by = 'recovered'"
                " WHERE end_ms IS NULL"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the buffer {self.path}: {exc}") from exc
        return cur.rowcount

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` or SQLite's first complaint."""
        try:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot check the buffer {self.path}: {exc}") from exc


def get_meta(conn: sqlite3.Connection, key: str) -> int:
    """An integer from the ``meta`` table (0 when absent)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    """Set an integer in the ``meta`` table (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, int(value)),
    )


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection for status and export, safe while the agent writes."""
    if not path.exists():
        raise StoreMissing(
            f"no buffer at {path}: the agent has not run with this data_dir yet "
            "(start it with: fleetpulse agent run --config PATH)"
        )
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the buffer {path}: {exc}") from exc
    return conn
