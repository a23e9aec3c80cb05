"""Publish gold tables as Delta tables (delta-rs) under ``<data_dir>/gold/<table>``.

A full run overwrites each table; an incremental run replaces only what it recomputed with
one predicate overwrite per table (``day IN (...)``, for quarantine the new batches), so a
late batch corrects old days and re-running the same work writes the same rows. Timestamps
are written as UTC-aware microseconds (Delta's ``timestamp``), days as ``date``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError

from .errors import PublishError

log = logging.getLogger(__name__)

# Per-device tables grow with the fleet: one folder per day keeps a day's overwrite small.
PARTITIONED = {
    "device_day": ["day"],
    "device_firmware_day": ["day"],
    "agent_device_day": ["day"],
}


@dataclass(frozen=True)
class Published:
    """What one table write did: the Delta version after it and the rows written."""

    table: str
    version: int
    rows: int
    predicate: str | None


def table_path(gold_dir: Path, name: str) -> Path:
    return Path(gold_dir) / name


def delta_ready(table: pa.Table) -> pa.Table:
    """Timestamps as UTC microseconds, no null-typed columns: what Delta stores."""
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC")
        elif pa.types.is_null(t) or pa.types.is_large_string(t):
            t = pa.string()
        fields.append(pa.field(f.name, t, nullable=True))
    return table.cast(pa.schema(fields))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def day_predicate(days: Iterable[date]) -> str:
    return "day IN (" + ", ".join(_quote(d.isoformat()) for d in sorted(set(days))) + ")"


def batch_predicate(batch_ids: Iterable[str]) -> str:
    ids = sorted(set(batch_ids))
    return "source = 'batch' AND batch_id IN (" + ", ".join(_quote(b) for b in ids) + ")"


def version_of(gold_dir: Path, name: str) -> int | None:
    """The current Delta version of a gold table, or None if it does not exist yet."""
    path = table_path(gold_dir, name)
    if not DeltaTable.is_deltatable(str(path)):
        return None
    return DeltaTable(str(path)).version()


def read_rows(gold_dir: Path, name: str, days: Sequence[date]) -> pa.Table | None:
    """The published rows of ``days`` (None if the table does not exist)."""
    path = table_path(gold_dir, name)
    if not days or not DeltaTable.is_deltatable(str(path)):
        return None
    try:
        ds = DeltaTable(str(path)).to_pyarrow_dataset()
        import pyarrow.compute as pc
        import pyarrow.dataset as pds

        wanted = pa.array(sorted(set(days)), pa.date32())
        return ds.to_table(filter=pc.is_in(pds.field("day"), value_set=wanted))
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise PublishError(f"gold table {path} cannot be read: {exc}") from exc


def publish(
    gold_dir: Path,
    tables: Mapping[str, pa.Table],
    *,
    full: bool,
    days: Sequence[date],
    new_batches: Sequence[str],
    on_table: Callable[[str], None] | None = None,
) -> list[Published]:
    """Write every gold table; ``days`` and ``new_batches`` bound an incremental overwrite."""
    out = []
    for name, table in tables.items():
        path = table_path(gold_dir, name)
        data = delta_ready(table)
        exists = DeltaTable.is_deltatable(str(path))
        predicate: str | None = None
        if exists and not full:
            if name == "quarantine":
                if not new_batches:
                    continue
                predicate = batch_predicate(new_batches)
            else:
                if not days:
                    continue
                predicate = day_predicate(days)
        try:
            write_deltalake(
                str(path),
                data,
                mode="overwrite",
                predicate=predicate,
                partition_by=PARTITIONED.get(name),
                # A full run may follow a code change that added columns: take the new schema.
                schema_mode="overwrite" if predicate is None else None,
            )
            version = DeltaTable(str(path)).version()
        except (DeltaError, OSError, pa.ArrowException, ValueError) as exc:
            hint = "" if predicate is None else " (if the table's schema changed, run --full)"
            raise PublishError(f"cannot publish gold table {name} to {path}: {exc}{hint}") from exc
        log.info(
            "published %s: %d rows, version %d%s",
            name,
            data.num_rows,
            version,
            "" if predicate is None else f" where {predicate[:120]}",
        )
        out.append(Published(name, version, data.num_rows, predicate))
        if on_table is not None:
            on_table(name)
    return out
