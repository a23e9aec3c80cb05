"""Run the fan-in DAG on an engine: the one seam the CLI, the tests and the benchmark share."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import date
from typing import Any

import ibis.expr.types as ir
import pyarrow as pa

from pipeline import Cache, RunResult, Subscriber

from .dag import OUTPUTS, KpiSettings, SourceFile, fan_in
from .engine import Engine, Relation
from .silver import DAY_MS
from .state import KNOWN_DEVICE_GATEWAYS_SCHEMA, KNOWN_DEVICES_SCHEMA

_EPOCH = date(1970, 1, 1)


def days_table(days: Iterable[date], all_device_days: Collection[date] | None = None) -> pa.Table:
    """The days to compute: (day_idx = days since 1970, day, all_devices)."""
    ds = sorted(set(days))
    return pa.table(
        {
            "day_idx": pa.array([(d - _EPOCH).days for d in ds], pa.int64()),
            "day": pa.array(ds, pa.date32()),
            "all_devices": pa.array(
                [all_device_days is None or d in all_device_days for d in ds], pa.bool_()
            ),
        }
    )


def day_of_ms(ms: int) -> date:
    """The UTC day of an epoch-millisecond instant."""
    return date.fromordinal(_EPOCH.toordinal() + ms // DAY_MS)


def day_start_ms(d: date) -> int:
    return (d - _EPOCH).days * DAY_MS


def run_dag(
    engine: Engine,
    *,
    landed: ir.Table,
    batches: pa.Table,
    days: Sequence[date],
    settings: KpiSettings,
    sources: Mapping[str, SourceFile | pa.Table] | None = None,
    all_device_days: Collection[date] | None = None,
    scope_devices: Sequence[str] = (),
    known_devices: pa.Table | None = None,
    known_device_gateways: pa.Table | None = None,
    kept_device_day: pa.Table | None = None,
    kept_device_firmware_day: pa.Table | None = None,
    outputs: Sequence[str] = OUTPUTS,
    cache: Cache | None = None,
    record_dir: str | None = None,
    run_id: str | None = None,
    subscribers: Iterable[Subscriber] = (),
) -> RunResult:
    """Bronze → silver → gold for ``days``; gold tables come back as Arrow.

    ``sources`` maps registry/firmware/alerts to a ``SourceFile`` (read, cached by content)
    or to Arrow rows already read; a missing one is empty.
    """

    def rel(label: str, table: pa.Table) -> Relation:
        return Relation(engine.register(label, table), table.num_rows, label)

    count = engine.scalar(landed.count(), "counting landed rows")
    inputs: dict[str, Any] = {
        "engine": engine,
        "settings": settings,
        "landed": Relation(landed, count, "landed"),
        "batches": rel("batches", batches),
        "days": rel("days", days_table(days, all_device_days)),
        "scope_devices": rel(
            "scope_devices", pa.table({"device_id": pa.array(sorted(scope_devices), pa.string())})
        ),
        "known_devices": rel(
            "known_devices",
            KNOWN_DEVICES_SCHEMA.empty_table() if known_devices is None else known_devices,
        ),
        "known_device_gateways": rel(
            "known_device_gateways",
            KNOWN_DEVICE_GATEWAYS_SCHEMA.empty_table()
            if known_device_gateways is None
            else known_device_gateways,
        ),
    }
    for name in ("registry", "firmware", "alerts"):
        given = (sources or {}).get(name)
        if isinstance(given, pa.Table):
            inputs[f"{name}_rows"] = given
        else:
            inputs[f"{name}_file"] = given if given is not None else SourceFile(None, None)
    if kept_device_day is not None:
        inputs["kept_device_day"] = kept_device_day
    if kept_device_firmware_day is not None:
        inputs["kept_device_firmware_day"] = kept_device_firmware_day
    return fan_in().run(
        inputs,
        outputs=list(outputs),
        cache=cache,
        record_dir=record_dir,
        run_id=run_id,
        subscribers=subscribers,
    )
