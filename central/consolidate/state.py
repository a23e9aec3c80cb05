"""What consolidation already did: batches consolidated, devices and gateways seen, days published.

A SQLite file at ``<data_dir>/consolidation/state.sqlite``, owned by consolidation (the
ledger's tables stay the ingest API's). It is written in one transaction after the gold
tables are published, so a crash in between only makes the next run redo the same work;
publishing is a predicate overwrite, so redoing it is harmless.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa

from .errors import StateError

KNOWN_DEVICES_SCHEMA = pa.schema(
    [
        pa.field("device_id", pa.string()),
        pa.field("event_ms", pa.int64()),
        pa.field("ts_ms", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("seq", pa.int64()),
        pa.field("site", pa.string()),
    ]
)
KNOWN_DEVICE_GATEWAYS_SCHEMA = pa.schema(
    [pa.field("device_id", pa.string()), pa.field("gateway_id", pa.string())]
)

_DDL = (
    """CREATE TABLE IF NOT EXISTS consolidated (
        batch_id TEXT PRIMARY KEY,
        gateway_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        rows BIGINT NOT NULL,
        min_ms BIGINT,
        max_ms BIGINT,
        run_id TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT PRIMARY KEY,
        event_ms BIGINT, ts_ms BIGINT, kind TEXT, seq BIGINT, site TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS device_gateways (
        device_id TEXT NOT NULL, gateway_id TEXT NOT NULL, PRIMARY KEY (device_id, gateway_id)
    )""",
    "CREATE TABLE IF NOT EXISTS published_days (day TEXT PRIMARY KEY, run_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, digest TEXT)",
)


@dataclass(frozen=True)
class Consolidated:
    """A batch already consolidated, with the time span of its rows (epoch ms)."""

    batch_id: str
    gateway_id: str
    sha256: str
    rows: int
    min_ms: int | None
    max_ms: int | None


class State:
    """The consolidation state file; every method raises StateError on I/O failure."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            for stmt in _DDL:
                self.db.execute(stmt)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"consolidation state {self.path} cannot be opened: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def _query(self, sql: str, params: Iterable[object] = ()) -> list[tuple[object, ...]]:
        try:
            return list(self.db.execute(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise StateError(f"consolidation state {self.path}: {exc}") from exc

    def consolidated(self) -> dict[str, Consolidated]:
        rows = self._query(
            "SELECT batch_id, gateway_id, sha256, rows, min_ms, max_ms FROM consolidated"
        )
        return {str(r[0]): Consolidated(*r) for r in rows}  # type: ignore[arg-type]

    def published_days(self) -> set[date]:
        return {
            date.fromisoformat(str(r[0])) for r in self._query("SELECT day FROM published_days")
        }

    def source_digests(self) -> dict[str, str | None]:
        return {str(r[0]): r[1] for r in self._query("SELECT name, digest FROM sources")}  # type: ignore[misc]

    def known_devices(self) -> pa.Table:
        rows = self._query("SELECT device_id, event_ms, ts_ms, kind, seq, site FROM devices")
        names = KNOWN_DEVICES_SCHEMA.names
        return pa.Table.from_pylist(
            [dict(zip(names, r, strict=True)) for r in rows], schema=KNOWN_DEVICES_SCHEMA
        )

    def known_device_gateways(self) -> pa.Table:
        rows = self._query("SELECT device_id, gateway_id FROM device_gateways")
        return pa.Table.from_pylist(
            [{"device_id": d, "gateway_id": g} for d, g in rows],
            schema=KNOWN_DEVICE_GATEWAYS_SCHEMA,
        )

    def commit_run(
        self,
        *,
        run_id: str,
        full: bool,
        batches: Iterable[Consolidated],
        devices: pa.Table,
        device_gateways: pa.Table,
        days: Iterable[date],
        digests: dict[str, str | None],
    ) -> None:
        """Record one successful run in a single transaction."""
        try:
            cur = self.db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if full:
                    for table in ("consolidated", "devices", "device_gateways", "published_days"):
                        cur.execute(f"DELETE FROM {table}")
                cur.executemany(
                    "INSERT OR REPLACE INTO consolidated VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (b.batch_id, b.gateway_id, b.sha256, b.rows, b.min_ms, b.max_ms, run_id)
                        for b in batches
                    ],
                )
                cur.executemany(
                    "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?)",
                    [tuple(r[n] for n in KNOWN_DEVICES_SCHEMA.names) for r in devices.to_pylist()],
                )
                cur.executemany(
                    "INSERT OR IGNORE INTO device_gateways VALUES (?, ?)",
                    [(r["device_id"], r["gateway_id"]) for r in device_gateways.to_pylist()],
                )
                cur.executemany(
                    "INSERT OR REPLACE INTO published_days VALUES (?, ?)",
                    [(d.isoformat(), run_id) for d in days],
                )
                cur.execute("DELETE FROM sources")
                cur.executemany("INSERT INTO sources VALUES (?, ?)", sorted(digests.items()))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"consolidation state {self.path}: cannot record run: {exc}") from exc
