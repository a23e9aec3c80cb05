"""The device registry: read from ``[registry] path`` (CSV or Parquet), cached in SQLite.

The cache lets the agent enrich and compute KPIs with the last good registry when the file
is missing or broken; a broken file is an error naming the row and column, and the cache
stays as it was (nothing half-loaded).
"""

from __future__ import annotations

import csv
import logging
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas import Device

from .buffer import META_REGISTRY_MTIME, get_meta, set_meta
from .errors import RegistryError, StoreError

log = logging.getLogger(__name__)

_COLUMNS = (
    "device_id", "site", "lat", "lon", "heartbeat_s", "gap_k", "commissioned_at",
    "decommissioned_at",
)  # fmt: skip


def read_file(path: Path) -> list[Device]:
    """Every row of a registry CSV or Parquet file as ``Device``; errors name the row."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq  # only when a Parquet registry is used

            rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        else:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = [
                    {k: v for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(
                        ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")
                    )
                ]
    except FileNotFoundError as exc:
        raise RegistryError(
            f"[registry] path {str(path)!r} does not exist: fix the path or remove the key"
        ) from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RegistryError(f"[registry] path {str(path)!r} cannot be read: {exc}") from exc
    except Exception as exc:  # pyarrow's errors: not Parquet, truncated file
        raise RegistryError(
            f"[registry] path {str(path)!r} is not a readable Parquet file: {exc}"
        ) from exc
    devices: dict[str, Device] = {}
    for number, row in enumerate(rows, 1):
        try:
            dev = Device.model_validate({k: v for k, v in row.items() if v is not None})
        except ValidationError as exc:
            err = exc.errors()[0]
            col = ".".join(str(p) for p in err["loc"]) or "row"
            raise RegistryError(
                f"{path}: row {number}: column {col!r}: {err['msg']}; fix the row "
                "(the previous registry stays in use)"
            ) from exc
        if dev.device_id in devices:
            raise RegistryError(
                f"{path}: row {number}: device_id {dev.device_id!r} appears twice; keep one row"
            )
        devices[dev.device_id] = dev
    return list(devices.values())


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def store(conn: sqlite3.Connection, devices: Iterable[Device], mtime_ns: int) -> int:
    """Replace the cached registry in one transaction; the number of devices."""
    rows = [
        (d.device_id, d.site, d.lat, d.lon, d.heartbeat_s, d.gap_k,
         _iso(d.commissioned_at), _iso(d.decommissioned_at))
        for d in devices
    ]  # fmt: skip
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM devices")
            conn.executemany(f"INSERT INTO devices ({', '.join(_COLUMNS)}) VALUES "
                             "(?,?,?,?,?,?,?,?)", rows)  # fmt: skip
            set_meta(conn, META_REGISTRY_MTIME, mtime_ns)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"cannot cache the registry: {exc}") from exc
    return len(rows)


def refresh(conn: sqlite3.Connection, path: Path | None) -> bool:
    """Reload the cache when the file changed since the last load; True if reloaded."""
    if path is None:
        return False
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise RegistryError(
            f"[registry] path {str(path)!r} cannot be read ({exc.strerror}); "
            "the cached registry stays in use"
        ) from exc
    if mtime == get_meta(conn, META_REGISTRY_MTIME):
        return False
    count = store(conn, read_file(path), mtime)
    log.info("registry %s loaded: %d devices", path, count)
    return True


def cached(conn: sqlite3.Connection) -> list[Device]:
    """The cached registry."""
    try:
        rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM devices").fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the registry cache: {exc}") from exc
    out = []
    for row in rows:
        values = {k: v for k, v in zip(_COLUMNS, row, strict=True) if v is not None}
        out.append(Device.model_validate(values))
    return out
