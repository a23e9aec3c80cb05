"""The ledger: which batches landed (id, gateway, sha256, rows, event-time range), and tokens.

One interface, two backends: SQLite (default, a file in ``data_dir``) and PostgreSQL
(``ledger_url = "postgresql://..."``, for several ingest replicas). The batch id is the
primary key, so the database decides which of two concurrent uploads of one id wins.
Times are stored as UTC epoch milliseconds in both backends and returned as aware datetimes.

Read API for consolidation: ``get_batch(batch_id)``, ``batches(gateway_id=, received_after=,
limit=)`` (ordered by ``received_at, batch_id``), ``batch_count()``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .errors import LedgerConflict, LedgerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_DDL = (
    """CREATE TABLE IF NOT EXISTS batches (
        batch_id TEXT PRIMARY KEY,
        gateway_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        row_count BIGINT NOT NULL,
        min_ts_ms BIGINT,
        max_ts_ms BIGINT,
        landing_path TEXT NOT NULL,
        received_at_ms BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS batches_received ON batches (received_at_ms, batch_id)",
    "CREATE INDEX IF NOT EXISTS batches_gateway ON batches (gateway_id, received_at_ms)",
    """CREATE TABLE IF NOT EXISTS gateway_tokens (
        token_id TEXT PRIMARY KEY,
        gateway_id TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        revoked_at_ms BIGINT
    )""",
    "CREATE INDEX IF NOT EXISTS gateway_tokens_gw ON gateway_tokens (gateway_id)",
)
_BATCH_COLS = (
    "batch_id, gateway_id, sha256, size_bytes, row_count, min_ts_ms, max_ts_ms, "
    "landing_path, received_at_ms"
)


def ms_to_dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class LedgerBatch:
    """One landed batch. ``landing_path`` is relative to the landing store root."""

    batch_id: str
    gateway_id: str
    sha256: str
    size_bytes: int
    rows: int
    min_ts_ms: int | None
    max_ts_ms: int | None
    landing_path: str
    received_at_ms: int

    @property
    def min_ts(self) -> datetime | None:
        return ms_to_dt(self.min_ts_ms)

    @property
    def max_ts(self) -> datetime | None:
        return ms_to_dt(self.max_ts_ms)

    @property
    def received_at(self) -> datetime:
        return datetime.fromtimestamp(self.received_at_ms / 1000, tz=UTC)

    def as_row(self) -> tuple[Any, ...]:
        return (
            self.batch_id,
            self.gateway_id,
            self.sha256,
            self.size_bytes,
            self.rows,
            self.min_ts_ms,
            self.max_ts_ms,
            self.landing_path,
            self.received_at_ms,
        )


@dataclass(frozen=True)
class TokenRecord:
    """A gateway token as stored: never the token itself, only the hash of its secret."""

    token_id: str
    gateway_id: str
    secret_sha256: str
    created_at_ms: int
    revoked_at_ms: int | None

    @property
    def active(self) -> bool:
        return self.revoked_at_ms is None


class Ledger:
    """Ledger on a DB-API connection; use ``open_ledger(url)`` to get one."""

    placeholder = "?"
    name = "ledger"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None

    # -- backend hooks -------------------------------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _is_conflict(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _is_db_error(self, exc: Exception) -> bool:
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _run(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                return fn(self._conn)
            except Exception as exc:
                if self._is_conflict(exc):
                    raise LedgerConflict(str(exc)) from exc
                if self._is_db_error(exc):
                    self._drop()
                    raise LedgerUnavailable(f"{self.name}: {exc}".strip()) from exc
                raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # the connection is already broken; closing is best effort
                log.debug("closing a broken ledger connection failed", exc_info=True)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        def go(conn: Any) -> int:
            cur = conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount or 0)

        return self._run(go)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: list(conn.execute(self._sql(sql), tuple(params))))

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> Ledger:
        """Connect and create the tables if missing."""

        def create(conn: Any) -> None:
            for ddl in _DDL:
                conn.execute(ddl)

        self._run(create)
        return self

    def close(self) -> None:
        with self._lock:
            self._drop()

    def ping(self) -> None:
        """Raise ``LedgerUnavailable`` unless the database answers."""
        self._query("SELECT 1")

    # -- batches ------------------------------------------------------------------------------
    def record_batch(self, batch: LedgerBatch) -> None:
        """Insert ``batch``; ``LedgerConflict`` if its id is already recorded."""
        marks = ", ".join("?" * len(batch.as_row()))
        self._exec(f"INSERT INTO batches ({_BATCH_COLS}) VALUES ({marks})", batch.as_row())

    def get_batch(self, batch_id: str) -> LedgerBatch | None:
        rows = self._query(f"SELECT {_BATCH_COLS} FROM batches WHERE batch_id = ?", (batch_id,))
        return LedgerBatch(*rows[0]) if rows else None

    def batches(
        self,
        *,
        gateway_id: str | None = None,
        received_after_ms: int | None = None,
        limit: int | None = None,
    ) -> list[LedgerBatch]:
        """Landed batches ordered by ``(received_at, batch_id)``, optionally filtered."""
        where: list[str] = []
        params: list[Any] = []
        if gateway_id is not None:
            where.append("gateway_id = ?")
            params.append(gateway_id)
        if received_after_ms is not None:
            where.append("received_at_ms > ?")
            params.append(received_after_ms)
        sql = f"SELECT {_BATCH_COLS} FROM batches"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at_ms, batch_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [LedgerBatch(*r) for r in self._query(sql, params)]

    def batch_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM batches")[0][0])

    def landing_paths(self) -> dict[str, str]:
        """``landing_path → batch_id`` of every recorded batch (startup reconciliation)."""
        return {p: b for b, p in self._query("SELECT batch_id, landing_path FROM batches")}

    # -- tokens --------------------------------------------------------------------------------
    def add_token(self, record: TokenRecord) -> None:
        self._exec(
            "INSERT INTO gateway_tokens (token_id, gateway_id, secret_sha256, created_at_ms, "
            "revoked_at_ms) VALUES (?, ?, ?, ?, ?)",
            (
                record.token_id,
                record.gateway_id,
                record.secret_sha256,
                record.created_at_ms,
                record.revoked_at_ms,
            ),
        )

    def get_token(self, token_id: str) -> TokenRecord | None:
        rows = self._query(
            "SELECT token_id, gateway_id, secret_sha256, created_at_ms, revoked_at_ms "
            "FROM gateway_tokens WHERE token_id = ?",
            (token_id,),
        )
        return TokenRecord(*rows[0]) if rows else None

    def tokens(self) -> list[TokenRecord]:
        rows = self._query(
            "SELECT token_id, gateway_id, secret_sha256, created_at_ms, revoked_at_ms "
            "FROM gateway_tokens ORDER BY gateway_id, created_at_ms, token_id"
        )
        return [TokenRecord(*r) for r in rows]

    def revoke_tokens(self, gateway_id: str, at_ms: int, token_id: str | None = None) -> int:
        """Revoke the gateway's active tokens (or one of them); returns how many."""
        sql = (
            "UPDATE gateway_tokens SET revoked_at_ms = ? "
            "WHERE gateway_id = ? AND revoked_at_ms IS NULL"
        )
        params: list[Any] = [at_ms, gateway_id]
        if token_id is not None:
            sql += " AND token_id = ?"
            params.append(token_id)
        return self._exec(sql, params)


class SqliteLedger(Ledger):
    """SQLite in WAL mode with ``synchronous=FULL``: a row recorded survives power loss."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.name = f"ledger {path}"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level=None): every statement is its own transaction.
        conn = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _is_conflict(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def _is_db_error(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.Error | OSError)


class PostgresLedger(Ledger):
    """PostgreSQL through psycopg 3, autocommit; reconnects after a lost connection."""

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        # never echo a password into logs or error lines
        self.name = "ledger " + _redact(url)

    def _connect(self) -> Any:
        import psycopg  # only the PostgreSQL ledger needs it

        return psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def _is_conflict(self, exc: Exception) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _is_db_error(self, exc: Exception) -> bool:
        import psycopg

        return isinstance(exc, psycopg.Error | OSError)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{host}"


def open_ledger(url: str) -> Ledger:
    """``sqlite:///PATH`` or ``postgresql://...`` → an opened ``Ledger`` (tables created)."""
    if url.startswith("sqlite:///"):
        # SQLAlchemy's convention: sqlite:///rel/path, sqlite:////abs/path
        ledger: Ledger = SqliteLedger(Path(url.removeprefix("sqlite:///")))
    elif url.startswith(("postgresql://", "postgres://")):
        ledger = PostgresLedger(url)
    else:
        raise LedgerUnavailable(f"ledger_url {url!r}: use sqlite:///PATH or postgresql://...")
    return ledger.open()
