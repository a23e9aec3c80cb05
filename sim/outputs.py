"""Files a run writes: registry.csv, firmware_versions.avro, alerts.avro, truth/*.

Every file is written to a temporary name, fsynced and renamed, so a reader never sees half
a file; OSError and library errors become ``OutputError`` naming the path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.avro import ALERTS_AVSC, FIRMWARE_AVSC, load_avsc

from .errors import OutputError
from .fleet import DeviceSpec
from .truth import DeviceDay

REGISTRY_COLUMNS = (
    "device_id",
    "site",
    "lat",
    "lon",
    "heartbeat_s",
    "gap_k",
    "commissioned_at",
    "decommissioned_at",
)

DEVICE_DAY_SCHEMA = pa.schema(
    [
        pa.field("day", pa.date32(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("up_s", pa.int64(), nullable=False),
        pa.field("down_s", pa.int64(), nullable=False),
        pa.field("device_uptime", pa.float64()),
    ]
)


@contextmanager
def _atomic(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _write_bytes(path: Path, produce: Callable[[IO[bytes]], None]) -> None:
    buf = io.BytesIO()
    try:
        produce(buf)
    except (ValueError, TypeError, pa.ArrowException) as exc:
        raise OutputError(f"cannot encode {path.name}: {exc}") from exc
    with _atomic(path) as fh:
        fh.write(buf.getvalue())


def rfc3339(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_registry(path: Path, specs: list[DeviceSpec]) -> None:
    """registry.csv with the columns of ``schemas.registry.Device``; empty cell = default/none."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(REGISTRY_COLUMNS)
    for d in specs:
        decommissioned = "" if d.decommissioned_s is None else rfc3339(d.decommissioned_s)
        w.writerow(
            [
                d.device_id,
                d.site,
                d.lat,
                d.lon,
                d.heartbeat_s,
                "",
                rfc3339(d.commissioned_s),
                decommissioned,
            ]
        )
    with _atomic(path) as fh:
        fh.write(text.getvalue().encode())


def write_avro(path: Path, avsc: Path, records: list[dict[str, Any]], seed: int) -> None:
    """An Avro object container file (deflate) of ``records`` against the .avsc at ``avsc``.

    The sync marker is derived from the seed instead of drawn at random, so a seeded run
    writes byte-identical files (content-keyed caches downstream see no change).
    """
    schema = fastavro.parse_schema(load_avsc(avsc))
    marker = hashlib.sha256(f"{seed}:{path.name}".encode()).digest()[:16]
    _write_bytes(
        path,
        lambda fh: fastavro.writer(fh, schema, records, codec="deflate", sync_marker=marker),
    )


def write_firmware(path: Path, records: list[dict[str, Any]], seed: int) -> None:
    write_avro(path, FIRMWARE_AVSC, records, seed)


def write_alerts(path: Path, records: list[dict[str, Any]], seed: int) -> None:
    write_avro(path, ALERTS_AVSC, records, seed)


def write_device_day(path: Path, rows: list[DeviceDay]) -> None:
    """truth/device_day.parquet: ``day, device_id, up_s, down_s, device_uptime``."""
    table = pa.table(
        {
            "day": [r.day for r in rows],
            "device_id": [r.device_id for r in rows],
            "up_s": [r.up_s for r in rows],
            "down_s": [r.down_s for r in rows],
            "device_uptime": [r.device_uptime for r in rows],
        },
        schema=DEVICE_DAY_SCHEMA,
    )
    _write_bytes(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    """A roll-up (fleet/firmware/site per day) as Parquet."""
    table = pa.Table.from_pylist(rows)
    _write_bytes(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    with _atomic(path) as fh:
        fh.write(text.encode())
