"""Inputs of consolidation: landed batches, the device registry, firmware and alert Avro files.

Everything here reads files into Arrow (or lists batches); the engine takes it from there.
Bad files raise ``SourceError`` naming the file and, where it helps, the row and column.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic

from schemas import Device
from schemas.avro import ALERTS_AVSC, FIRMWARE_AVSC, load_avsc

from .errors import SourceError

log = logging.getLogger(__name__)

_TS = pa.timestamp("ms", tz="UTC")

REGISTRY_SCHEMA = pa.schema(
    [
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("site", pa.string(), nullable=False),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("heartbeat_s", pa.float64(), nullable=False),
        pa.field("gap_k", pa.float64()),
        pa.field("commissioned_at", _TS),
        pa.field("decommissioned_at", _TS),
    ]
)
FIRMWARE_SCHEMA = pa.schema(
    [
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("firmware_version", pa.string(), nullable=False),
        pa.field("installed_at", _TS, nullable=False),
    ]
)
ALERTS_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("raised_at", _TS, nullable=False),
        pa.field("cleared_at", _TS),
    ]
)
# Columns a v1 batch lacks, with their Ibis types: when no file read has them, the engine
# adds them as nulls (a v1-only landing reads as v2 files without KPI rows).
V2_COLUMNS: dict[str, str] = {
    "day": "date",
    "eligible_s": "float64",
    "up_s": "float64",
    "down_s": "float64",
    "unknown_s": "float64",
    "device_uptime": "float64",
    "connectivity_ratio": "float64",
    "computed_at": "timestamp('UTC')",
}
# The columns of a landed batch that consolidation reads (schemas.batch.BATCH_SCHEMA).
BATCH_COLUMNS: tuple[str, ...] = (
    "record_type",
    "gateway_id",
    "device_id",
    "site",
    "kind",
    "ts",
    "seq",
    "received_at",
    "end_ts",
    "state",
    "event_type",
    "fw",
    "lat",
    "lon",
    # schema v2: the agents' KPI rows (record type ``kpi``)
    *V2_COLUMNS,
)


# -- landed batches -----------------------------------------------------------------------


@dataclass(frozen=True)
class LandedBatch:
    """One batch in the landing store, as the ledger recorded it."""

    batch_id: str
    gateway_id: str
    sha256: str
    rows: int
    path: str
    received_at: datetime


class BatchSource(Protocol):
    """Anything that lists landed batches (the ledger, or a scan of the landing store)."""

    def landed_batches(self) -> list[LandedBatch]: ...


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LandingScan:
    """Batches found by walking ``<root>/gateway=<gw>/date=<day>/<batch_id>.parquet``.

    Used when no ledger is at hand (tests, a landing store copied elsewhere); the row count
    comes from the Parquet footer, so the reconciliation gate checks files against
    themselves here and against the ledger's counts in production.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def landed_batches(self) -> list[LandedBatch]:
        out = []
        for path in sorted(self.root.glob("gateway=*/date=*/*.parquet")):
            gateway = path.parent.parent.name.removeprefix("gateway=")
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(f"landed batch {path} is not readable Parquet: {exc}") from exc
            out.append(
                LandedBatch(
                    batch_id=path.stem,
                    gateway_id=gateway,
                    sha256=sha256_file(path),
                    rows=rows,
                    path=str(path),
                    received_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                )
            )
        return out


def batches_table(batches: Sequence[LandedBatch]) -> pa.Table:
    """The ledger side of bronze's lineage columns: one row per batch."""
    return pa.table(
        {
            "batch_id": pa.array([b.batch_id for b in batches], pa.string()),
            "ledger_gateway_id": pa.array([b.gateway_id for b in batches], pa.string()),
            "ingested_at": pa.array([b.received_at for b in batches], _TS),
            "ledger_rows": pa.array([b.rows for b in batches], pa.int64()),
        }
    )


# -- registry -----------------------------------------------------------------------------


def registry_table(devices: Iterable[Device]) -> pa.Table:
    """Registry rows (validated Device models) as Arrow; duplicate device ids are an error."""
    rows = [d.model_dump() for d in devices]
    seen: set[str] = set()
    for r in rows:
        if r["device_id"] in seen:
            raise SourceError(
                f"registry lists device_id {r['device_id']!r} twice: keep one row per device"
            )
        seen.add(r["device_id"])
    return pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA)


def read_registry(path: Path) -> pa.Table:
    """The device registry from CSV (header row) or Parquet, each row checked as a Device."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"registry {path} does not exist: set [sources] registry to its path")
    if path.suffix.lower() == ".parquet":
        try:
            records = pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"registry {path} is not readable Parquet: {exc}") from exc
        first_line = 0
    else:
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                records = [
                    {k: (v if v != "" else None) for k, v in row.items() if k is not None}
                    for row in csv.DictReader(fh)
                ]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SourceError(f"registry {path} is not a readable CSV file: {exc}") from exc
        first_line = 2  # line 1 is the header
    devices = []
    for i, rec in enumerate(records):
        try:
            devices.append(Device.model_validate(rec))
        except pydantic.ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            col = ".".join(str(p) for p in err["loc"]) or "row"
            where = f"line {first_line + i}" if first_line else f"row {i}"
            raise SourceError(
                f"registry {path} {where}: column {col!r} = {err.get('input')!r}: {err['msg']}"
            ) from None
    return registry_table(devices)


# -- Avro: firmware history and alerts ----------------------------------------------------


def avro_files(path: Path) -> list[Path]:
    """``path`` itself, or the ``*.avro`` files of a folder in name order."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.glob("*.avro") if p.is_file())
    if path.exists():
        return [path]
    raise SourceError(f"Avro source {path} does not exist: fix the path in [sources]")


def _read_avro(path: Path, avsc: Path, schema: pa.Schema) -> pa.Table:
    reader_schema = fastavro.parse_schema(load_avsc(avsc))
    tables = []
    for f in avro_files(path):
        try:
            with open(f, "rb") as fh:
                # Resolving against our schema checks field names and types, so a file with
                # a renamed or retyped field fails here, naming it, not deep in a query.
                records: list[dict[str, Any]] = list(
                    fastavro.reader(fh, reader_schema=reader_schema)  # type: ignore[arg-type]
                )
        except (OSError, ValueError, EOFError, fastavro.read.SchemaResolutionError) as exc:
            raise SourceError(f"Avro file {f} cannot be read as {avsc.name}: {exc}") from exc
        try:
            tables.append(pa.Table.from_pylist(records, schema=schema))
        except (pa.ArrowException, TypeError) as exc:
            raise SourceError(f"Avro file {f} has values outside {avsc.name}: {exc}") from exc
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_firmware(path: Path | None) -> pa.Table:
    """Firmware installs (``device_id, firmware_version, installed_at``); none if no path."""
    if path is None:
        return FIRMWARE_SCHEMA.empty_table()
    return _read_avro(path, FIRMWARE_AVSC, FIRMWARE_SCHEMA)


def read_alerts(path: Path | None) -> pa.Table:
    """Alerts (``alert_id, device_id, severity, type, raised_at, cleared_at``); none if no path."""
    if path is None:
        return ALERTS_SCHEMA.empty_table()
    return _read_avro(path, ALERTS_AVSC, ALERTS_SCHEMA)


def file_digest(path: Path | None) -> str | None:
    """sha256 over a file, or over the names and contents of a folder's ``*.avro`` files."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path) if path.exists() else None
    h = hashlib.sha256()
    for f in avro_files(path):
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\0")
    return h.hexdigest()


class LedgerSource:
    """Batches recorded in the ingest ledger, with their files in the landing store."""

    def __init__(self, ledger_dsn: str, landing_url: str) -> None:
        self.ledger_dsn = ledger_dsn
        self.landing_url = landing_url

    def landed_batches(self) -> list[LandedBatch]:
        from central.errors import CentralError
        from central.landing import LandingStore
        from central.ledger import open_ledger

        store = LandingStore(self.landing_url)
        if not store.local:
            raise SourceError(
                f"landing store {self.landing_url} is not a local path: consolidation reads "
                "batches from local disk (or a mounted share) in this version"
            )
        try:
            ledger = open_ledger(self.ledger_dsn)
        except CentralError as exc:
            raise SourceError(f"cannot open the ledger to list landed batches: {exc}") from exc
        try:
            return [
                LandedBatch(
                    batch_id=b.batch_id,
                    gateway_id=b.gateway_id,
                    sha256=b.sha256,
                    rows=b.rows,
                    path=store.full(b.landing_path),
                    received_at=b.received_at,
                )
                for b in ledger.batches()
            ]
        finally:
            ledger.close()
