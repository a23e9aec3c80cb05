"""Read what the report shows: the gold Delta tables and the newest run record (I/O only)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import GoldInvalid, GoldMissing

log = logging.getLogger(__name__)

CONSOLIDATE_FIRST = "run `fleetpulse central consolidate` first"

# Per table: the columns the report reads and the Arrow type they are cast to. Extra columns
# are dropped, so a newer consolidation that adds columns still renders.
F, N, S, D = pa.float64(), pa.int64(), pa.string(), pa.date32()
REQUIRED: dict[str, dict[str, pa.DataType]] = {
    "device_day": {
        "day": D,
        "device_id": S,
        "site": S,
        "geohash5": S,
        "firmware_version": S,
        "up_s": F,
        "down_s": F,
        "unknown_s": F,
        "device_uptime": F,
        "connectivity_ratio": F,
        "alert_count": N,
    },
    "fleet_day": {"day": D, "devices": N, "up_s": F, "down_s": F, "unknown_s": F},
    "firmware_day": {"day": D, "firmware_version": S, "devices": N, "up_s": F, "down_s": F},
    "site_day": {"day": D, "site": S, "devices": N, "up_s": F, "down_s": F},
    "geo_day": {"day": D, "geohash5": S, "devices": N, "up_s": F, "down_s": F},
}
# Read when present; the report says less without them.
OPTIONAL_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "device_day": {"alert_down_s": F},
    "fleet_day": {"uptime_target": F, "devices_meeting_target": N, "devices_with_uptime": N},
}
OPTIONAL_TABLES: dict[str, dict[str, pa.DataType]] = {
    "device_firmware_day": {
        "day": D,
        "device_id": S,
        "firmware_version": S,
        "up_s": F,
        "down_s": F,
    },
    "quarantine": {"day": D, "source": S, "reason": S},
}
# Row order of each table once read: a partitioned Delta table comes back in file order, which
# varies, and the same tables must give the same report.
ORDER: dict[str, list[str]] = {
    "device_day": ["day", "device_id"],
    "fleet_day": ["day"],
    "firmware_day": ["day", "firmware_version"],
    "site_day": ["day", "site"],
    "geo_day": ["day", "geohash5"],
    "device_firmware_day": ["day", "device_id", "firmware_version"],
    "quarantine": ["day", "source", "reason"],
}
# Run records read (newest first) while looking for the one that published the tables.
MAX_RUN_RECORDS = 50


@dataclass(frozen=True)
class TableVersion:
    """Which Delta version of a gold table the report read, and when it was committed."""

    name: str
    version: int
    committed_at: str | None
    rows: int


@dataclass
class Gold:
    """The gold tables as Arrow, cut to the report's columns and days."""

    device_day: pa.Table
    fleet_day: pa.Table
    firmware_day: pa.Table
    site_day: pa.Table
    geo_day: pa.Table
    device_firmware_day: pa.Table | None = None
    quarantine: pa.Table | None = None
    versions: list[TableVersion] = field(default_factory=list)


@dataclass(frozen=True)
class RunInfo:
    """The run record behind the tables, the runs after it that published nothing because
    they failed, and the newest records (newest first) for the run history."""

    path: Path | None
    record: dict[str, Any] | None
    newer_failed: list[dict[str, Any]] = field(default_factory=list)
    recent: list[dict[str, Any]] = field(default_factory=list)


def gold_dir_of(data_dir: Path) -> Path:
    return data_dir / "gold"


def runs_dir_of(data_dir: Path) -> Path:
    return data_dir / "runs"


def _is_delta(path: Path) -> bool:
    return (path / "_delta_log").is_dir()


def _read_delta(path: Path, name: str) -> tuple[pa.Table, TableVersion]:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    try:
        dt = DeltaTable(str(path))
        table = dt.to_pyarrow_table()
        history = dt.history(1)
    except (DeltaError, OSError, pa.ArrowException) as exc:
        raise GoldInvalid(
            f"gold table {name!r} at {path} cannot be read ({exc}); "
            f"{CONSOLIDATE_FIRST} again, or restore the table"
        ) from exc
    committed = None
    if history and isinstance(history[0].get("timestamp"), int):
        ts = history[0]["timestamp"] / 1000
        committed = datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")
    return table, TableVersion(name, dt.version(), committed, table.num_rows)


def _conform(
    table: pa.Table, name: str, required: dict[str, pa.DataType], optional: dict[str, pa.DataType]
) -> pa.Table:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise GoldInvalid(
            f"gold table {name!r} has no column {', '.join(map(repr, missing))} "
            f"(it has {', '.join(table.column_names)}); it was written by another version: "
            f"{CONSOLIDATE_FIRST} with this version"
        )
    wanted = {**required, **{c: t for c, t in optional.items() if c in table.column_names}}
    table = table.sort_by([(c, "ascending") for c in ORDER[name]])
    arrays = []
    for col, typ in wanted.items():
        try:
            arrays.append(table[col].cast(typ))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise GoldInvalid(
                f"gold table {name!r} column {col!r} is {table.schema.field(col).type}, "
                f"not {typ}: {CONSOLIDATE_FIRST} with this version"
            ) from exc
    return pa.table(arrays, names=list(wanted))


def _between(table: pa.Table, since: date | None, until: date | None) -> pa.Table:
    mask = None
    if since is not None:
        mask = pc.greater_equal(table["day"], pa.scalar(since, pa.date32()))
    if until is not None:
        m = pc.less_equal(table["day"], pa.scalar(until, pa.date32()))
        mask = m if mask is None else pc.and_(mask, m)
    return table if mask is None else table.filter(mask)


def load_gold(gold_dir: Path, since: date | None = None, until: date | None = None) -> Gold:
    """Every gold table the report needs, as Arrow; ``GoldMissing`` names the absent ones."""
    absent = [n for n in REQUIRED if not _is_delta(gold_dir / n)]
    if len(absent) == len(REQUIRED):
        raise GoldMissing(f"no gold tables at {gold_dir}: {CONSOLIDATE_FIRST}")
    if absent:
        raise GoldMissing(
            f"gold table(s) {', '.join(absent)} missing under {gold_dir}: {CONSOLIDATE_FIRST}"
        )
    tables: dict[str, pa.Table] = {}
    versions = []
    for name, required in REQUIRED.items():
        raw, version = _read_delta(gold_dir / name, name)
        tables[name] = _between(
            _conform(raw, name, required, OPTIONAL_COLUMNS.get(name, {})), since, until
        )
        versions.append(version)
    extras: dict[str, pa.Table | None] = {}
    for name, required in OPTIONAL_TABLES.items():
        extras[name] = None
        if not _is_delta(gold_dir / name):
            continue
        raw, version = _read_delta(gold_dir / name, name)
        try:
            extras[name] = _between(_conform(raw, name, required, {}), since, until)
        except GoldInvalid as exc:
            # An optional table only adds detail: say why it is left out, keep going.
            log.warning("leaving %s out of the report: %s", name, exc)
            continue
        versions.append(version)
    if tables["device_day"].num_rows == 0:
        if since is None and until is None:
            raise GoldMissing(
                f"gold table device_day at {gold_dir} has no rows: upload batches and "
                f"{CONSOLIDATE_FIRST}"
            )
        span = " ".join(
            p for p in (f"from {since}" if since else "", f"until {until}" if until else "") if p
        )
        raise GoldMissing(
            f"gold table device_day at {gold_dir} has no rows {span}: widen --since/--until"
        )
    return Gold(
        **tables,
        device_firmware_day=extras["device_firmware_day"],
        quarantine=extras["quarantine"],
        versions=versions,
    )


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("skipping run record %s: %s", path, exc)
        return None
    if not isinstance(record, dict):
        log.warning("skipping run record %s: not a JSON object", path)
        return None
    return record


# Statuses of runs that wrote gold tables, and of runs that tried and failed (consolidation's
# runner also writes "nothing_new": a run that had nothing to do, neither).
PUBLISHED = frozenset({"ok"})
FAILED = frozenset({"failed", "gate_failed", "running"})
RECENT_RUNS = 10


def latest_run(runs_dir: Path) -> RunInfo | None:
    """The newest run record that published (a failed run publishes nothing), or None when
    there is no record at all.

    Failed runs newer than it are returned alongside: the reader should know that the tables
    are older than the last attempt. ``running`` counts as failed: a finished run rewrites its
    record, so a newer one still running either crashed or is running right now.
    """
    if not runs_dir.is_dir():
        return None
    paths = sorted(
        (p for p in runs_dir.glob("*.json") if not p.name.startswith(".")),
        key=lambda p: (p.stat().st_mtime_ns, p.name),
        reverse=True,
    )
    newer_failed: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    for path in paths[:MAX_RUN_RECORDS]:
        record = _read_record(path)
        if record is None:
            continue
        if len(recent) < RECENT_RUNS:
            recent.append(record)
        status = record.get("status")
        if status in PUBLISHED:
            return RunInfo(path, record, newer_failed, recent + _more(paths, path, recent))
        if status in FAILED:
            newer_failed.append(record)
    if not recent:
        return None
    return RunInfo(None, None, newer_failed, recent)


def _more(paths: list[Path], found: Path, recent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Fill the history up to RECENT_RUNS with the records older than the one found.
    out: list[dict[str, Any]] = []
    for path in paths[paths.index(found) + 1 :]:
        if len(recent) + len(out) >= RECENT_RUNS:
            break
        record = _read_record(path)
        if record is not None:
            out.append(record)
    return out
