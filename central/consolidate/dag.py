"""The fan-in DAG: one step per bronze/silver/gold definition, wired by parameter names.

Each step hands Ibis tables to a definition in bronze.py, silver.py or gold.py and
materialises the result on the run's engine (``Relation``: table, row count, schema, so
the run record shows each step's rows and schema). Gold steps return Arrow tables, which
the gates check and ``publish`` writes. Steps here are never cached: engine tables live
for one run. The source readers in ``sources_dag`` are cached by content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis.expr.types as ir
import pyarrow as pa

from pipeline import Pipeline, make_step

from . import bronze as B
from . import gold as G
from . import silver as S
from .engine import Engine, Relation
from .sources import REGISTRY_SCHEMA, read_alerts, read_firmware, read_registry


@dataclass(frozen=True)
class KpiSettings:
    """The KPI knobs of DESIGN §4 that are not in the registry."""

    gap_k: float = 2.5
    uptime_target: float = 0.99


def _m(engine: Engine, label: str, expr: ir.Table) -> Relation:
    return engine.materialize(label, expr)


def _v(engine: Engine, label: str, expr: ir.Table) -> Relation:
    # A view: rows are counted for the record, nothing is stored.
    return Relation(expr, engine.scalar(expr.count(), f"counting {label}"), label)


# -- sources (cached by content: decoding Avro is the slow part) --------------------------


@dataclass(frozen=True)
class SourceFile:
    """A source file or folder and the sha256 of its content (None: not configured)."""

    path: str | None
    digest: str | None


def registry_rows(registry_file: SourceFile) -> pa.Table:
    """The device registry (CSV or Parquet), every row checked."""
    if registry_file.path is None:
        return REGISTRY_SCHEMA.empty_table()
    return read_registry(Path(registry_file.path))


def firmware_rows(firmware_file: SourceFile) -> pa.Table:
    """Firmware installs from Avro."""
    return read_firmware(None if firmware_file.path is None else Path(firmware_file.path))


def alerts_rows(alerts_file: SourceFile) -> pa.Table:
    """Alerts from Avro."""
    return read_alerts(None if alerts_file.path is None else Path(alerts_file.path))


def _r(engine: Engine, label: str, table: pa.Table) -> Relation:
    return Relation(engine.register(label, table), table.num_rows, label)


def registry(engine: Engine, registry_rows: pa.Table) -> Relation:
    """The registry as an engine table."""
    return _r(engine, "registry", registry_rows)


def firmware(engine: Engine, firmware_rows: pa.Table) -> Relation:
    """Firmware installs as an engine table."""
    return _r(engine, "firmware", firmware_rows)


def alerts(engine: Engine, alerts_rows: pa.Table) -> Relation:
    """Alerts as an engine table."""
    return _r(engine, "alerts", alerts_rows)


# -- bronze -------------------------------------------------------------------------------


def batch_rows(engine: Engine, landed: Relation, batches: Relation) -> Relation:
    """Landed rows with their lineage columns (batch id, ingest time, uploading gateway)."""
    # Every landed file belongs to a listed batch, so the join keeps every row: no query
    # is needed to count them.
    return Relation(B.batch_rows(landed.table, batches.table), landed.num_rows, "batch_rows")


def normalized(engine: Engine, batch_rows: Relation) -> Relation:
    """Rows with epoch-ms times, event time, skew flag and the reason if invalid."""
    # A view, not stored: at 10M rows a wide copy costs more memory and time than the
    # few scans of the landed files that read it (same row count as batch_rows).
    return Relation(B.normalized(batch_rows.table), batch_rows.num_rows, "normalized")


def quarantine_rows(engine: Engine, normalized: Relation, alerts: Relation) -> Relation:
    """Batch rows and alerts set aside, with the reason."""
    expr = B.quarantine_rows(normalized.table).union(S.alert_quarantine(alerts.table))
    return _m(engine, "quarantine_rows", expr)


def valid_readings(engine: Engine, normalized: Relation) -> Relation:
    """Valid reading rows, every gateway's copy."""
    return _v(engine, "valid_readings", B.valid_readings(normalized.table))


def gateway_readings(engine: Engine, valid_readings: Relation) -> Relation:
    """What each gateway heard: (gateway, device, event time)."""
    return _m(engine, "gateway_readings", B.gateway_readings(valid_readings.table))


def bronze(engine: Engine, valid_readings: Relation) -> Relation:
    """One row per reading across gateways, with batch_id and ingested_at."""
    return _m(engine, "bronze", B.bronze(valid_readings.table))


def observations(engine: Engine, normalized: Relation) -> Relation:
    """Gateways' connected-and-subscribed intervals."""
    return _m(engine, "observations", B.observations(normalized.table))


def agent_kpis(engine: Engine, normalized: Relation) -> Relation:
    """The agents' valid KPI rows (their local view), apart from the readings."""
    return _m(engine, "agent_kpis", B.agent_kpis(normalized.table))


def reconciliation(
    engine: Engine, normalized: Relation, bronze: Relation, batches: Relation
) -> pa.Table:
    """Per batch: ledger rows against rows read, kept, duplicate, observation, kpi, quarantined."""
    expr = B.reconciliation(normalized.table, bronze.table, batches.table)
    return engine.to_arrow(expr.order_by("batch_id"), "reconciliation")


# -- silver -------------------------------------------------------------------------------


def seen_devices(engine: Engine, bronze: Relation, known_devices: Relation) -> Relation:
    """Every device ever read, with the site of its latest reading."""
    return _m(engine, "seen_devices", S.seen_devices(bronze.table, known_devices.table))


def seen_devices_rows(engine: Engine, seen_devices: Relation) -> pa.Table:
    """Devices seen so far, for the consolidation state."""
    return engine.to_arrow(seen_devices.table.order_by("device_id"), "seen_devices_rows")


def device_gateways_rows(engine: Engine, device_gateways: Relation) -> pa.Table:
    """(device, gateway) pairs seen so far, for the consolidation state."""
    expr = device_gateways.table.order_by(["device_id", "gateway_id"])
    return engine.to_arrow(expr, "device_gateways_rows")


def devices(
    engine: Engine, registry: Relation, seen_devices: Relation, settings: KpiSettings
) -> Relation:
    """Every device of the registry or the readings, with heartbeat, gap, window, geohash."""
    return _m(engine, "devices", S.devices(registry.table, seen_devices.table, settings.gap_k))


def targets(engine: Engine, devices: Relation, days: Relation, scope_devices: Relation) -> Relation:
    """The (device, day) pairs to compute and their eligible windows."""
    return _m(engine, "targets", S.targets(devices.table, days.table, scope_devices.table))


def device_gateways(
    engine: Engine, gateway_readings: Relation, known_device_gateways: Relation
) -> Relation:
    """Which gateways ever reported which device."""
    expr = S.device_gateways(gateway_readings.table, known_device_gateways.table)
    return _m(engine, "device_gateways", expr)


def gateway_hmax(engine: Engine, device_gateways: Relation, devices: Relation) -> Relation:
    """Per gateway the longest heartbeat of its devices."""
    return _m(engine, "gateway_hmax", S.gateway_hmax(device_gateways.table, devices.table))


def gateway_observed(
    engine: Engine, gateway_readings: Relation, observations: Relation, gateway_hmax: Relation
) -> Relation:
    """Per gateway the islands of time it could hear its devices."""
    expr = S.gateway_observed(gateway_readings.table, observations.table, gateway_hmax.table)
    return _m(engine, "gateway_observed", expr)


def device_observed(
    engine: Engine, device_gateways: Relation, gateway_observed: Relation
) -> Relation:
    """Per device the observed islands of all its gateways, merged."""
    expr = S.device_observed(device_gateways.table, gateway_observed.table)
    return _m(engine, "device_observed", expr)


def up_intervals(engine: Engine, bronze: Relation, devices: Relation) -> Relation:
    """Per device the up intervals from consecutive readings."""
    return _m(engine, "up_intervals", S.up_intervals(bronze.table, devices.table))


def covered(engine: Engine, up_intervals: Relation, device_observed: Relation) -> Relation:
    """Per device the islands of up or observed time (the rest is unknown)."""
    return _m(engine, "covered", S.covered(up_intervals.table, device_observed.table))


def firmware_windows(engine: Engine, firmware: Relation, targets: Relation) -> Relation:
    """Firmware validity intervals from lead() over each device's installs."""
    return _m(engine, "firmware_windows", S.firmware_windows(firmware.table, targets.table))


def segments(engine: Engine, targets: Relation, firmware_windows: Relation) -> Relation:
    """Eligible device-days cut at firmware changes (the interval join)."""
    return _m(engine, "segments", S.segments(targets.table, firmware_windows.table))


def segment_times(
    engine: Engine, segments: Relation, up_intervals: Relation, covered: Relation
) -> Relation:
    """Eligible, up, down and unknown milliseconds per segment."""
    expr = S.segment_times(segments.table, up_intervals.table, covered.table)
    return _m(engine, "segment_times", expr)


def connectivity(
    engine: Engine, targets: Relation, device_observed: Relation, bronze: Relation
) -> Relation:
    """Heartbeat slots in observed eligible time, and those holding a reading."""
    expr = S.connectivity(targets.table, device_observed.table, bronze.table)
    return _m(engine, "connectivity", expr)


def day_readings(engine: Engine, targets: Relation, bronze: Relation) -> Relation:
    """Deduplicated readings per device-day."""
    return _m(engine, "day_readings", S.day_readings(targets.table, bronze.table))


def alert_intervals(engine: Engine, alerts: Relation) -> Relation:
    """Alerts as intervals."""
    return _m(engine, "alert_intervals", S.alert_intervals(alerts.table))


def alert_day(
    engine: Engine,
    targets: Relation,
    alert_intervals: Relation,
    up_intervals: Relation,
    covered: Relation,
) -> Relation:
    """Alerts open per device-day and the downtime they overlap."""
    expr = S.alert_day(targets.table, alert_intervals.table, up_intervals.table, covered.table)
    return _m(engine, "alert_day", expr)


# -- gold ---------------------------------------------------------------------------------


def device_day(
    engine: Engine,
    targets: Relation,
    devices: Relation,
    segment_times: Relation,
    connectivity: Relation,
    day_readings: Relation,
    alert_day: Relation,
) -> pa.Table:
    """Gold: one row per device and day."""
    expr = G.device_day(
        targets.table,
        devices.table,
        segment_times.table,
        connectivity.table,
        day_readings.table,
        alert_day.table,
    )
    return engine.to_arrow(expr.order_by(["day", "device_id"]), "device_day")


def device_firmware_day(engine: Engine, targets: Relation, segment_times: Relation) -> pa.Table:
    """Gold: seconds per device, day and firmware version."""
    expr = G.device_firmware_day(targets.table, segment_times.table)
    return engine.to_arrow(
        expr.order_by(["day", "device_id", "firmware_version"]), "device_firmware_day"
    )


def agent_device_day(engine: Engine, agent_kpis: Relation, days: Relation) -> pa.Table:
    """Gold: each gateway's latest local KPI row per device and day (compare with device_day)."""
    expr = G.agent_device_day(agent_kpis.table, days.table)
    return engine.to_arrow(expr.order_by(["day", "gateway_id", "device_id"]), "agent_device_day")


def quarantine(engine: Engine, quarantine_rows: Relation) -> pa.Table:
    """Gold: rows set aside with their reason."""
    expr = G.quarantine(quarantine_rows.table)
    return engine.to_arrow(
        expr.order_by(["day", "source", "batch_id", "ts", "device_id", "kind", "seq", "reason"]),
        "quarantine",
    )


# -- roll-ups over every device of the recomputed days -----------------------------------


def device_day_all(device_day: pa.Table, kept_device_day: pa.Table | None = None) -> pa.Table:
    """Recomputed device-days plus the published ones of the same days left untouched."""
    if kept_device_day is None or not kept_device_day.num_rows:
        return device_day
    kept = kept_device_day.select(device_day.column_names).cast(device_day.schema)
    return pa.concat_tables([device_day, kept])


def device_firmware_day_all(
    device_firmware_day: pa.Table, kept_device_firmware_day: pa.Table | None = None
) -> pa.Table:
    """Recomputed device-firmware-days plus the untouched published ones of the same days."""
    table = device_firmware_day
    if kept_device_firmware_day is None or not kept_device_firmware_day.num_rows:
        return table
    kept = kept_device_firmware_day.select(table.column_names).cast(table.schema)
    return pa.concat_tables([table, kept])


def fleet_day(engine: Engine, device_day_all: pa.Table, settings: KpiSettings) -> pa.Table:
    """Gold: fleet uptime per day (time-weighted) and devices meeting the target."""
    expr = G.fleet_day(engine.register("device_day_all", device_day_all), settings.uptime_target)
    return engine.to_arrow(expr.order_by("day"), "fleet_day")


def firmware_day(engine: Engine, device_firmware_day_all: pa.Table) -> pa.Table:
    """Gold: uptime per day and firmware version."""
    expr = G.firmware_day(engine.register("device_firmware_day_all", device_firmware_day_all))
    return engine.to_arrow(expr.order_by(["day", "firmware_version"]), "firmware_day")


def site_day(engine: Engine, device_day_all: pa.Table) -> pa.Table:
    """Gold: uptime per day and site."""
    t = engine.register("device_day_all", device_day_all)
    return engine.to_arrow(G.site_day(t).order_by(["day", "site"]), "site_day")


def geo_day(engine: Engine, device_day_all: pa.Table) -> pa.Table:
    """Gold: uptime per day and geohash-5 cell."""
    t = engine.register("device_day_all", device_day_all)
    return engine.to_arrow(G.geo_day(t).order_by(["day", "geohash5"]), "geo_day")


STEPS: list[Callable[..., Any]] = [
    registry_rows,
    firmware_rows,
    alerts_rows,
    registry,
    firmware,
    alerts,
    batch_rows,
    normalized,
    quarantine_rows,
    valid_readings,
    gateway_readings,
    bronze,
    observations,
    agent_kpis,
    reconciliation,
    seen_devices,
    seen_devices_rows,
    devices,
    targets,
    device_gateways,
    device_gateways_rows,
    gateway_hmax,
    gateway_observed,
    device_observed,
    up_intervals,
    covered,
    firmware_windows,
    segments,
    segment_times,
    connectivity,
    day_readings,
    alert_intervals,
    alert_day,
    device_day,
    device_firmware_day,
    device_day_all,
    device_firmware_day_all,
    agent_device_day,
    quarantine,
    fleet_day,
    firmware_day,
    site_day,
    geo_day,
]

# The published tables, in the order they are written.
GOLD_TABLES = (
    "device_day",
    "device_firmware_day",
    "fleet_day",
    "firmware_day",
    "site_day",
    "geo_day",
    "agent_device_day",
    "quarantine",
)
OUTPUTS = [
    *GOLD_TABLES,
    "device_day_all",
    "device_firmware_day_all",
    "reconciliation",
    "seen_devices_rows",
    "device_gateways_rows",
]


def fan_in() -> Pipeline:
    """The whole fan-in DAG: bronze → silver → gold, engine tables in, Arrow gold out."""
    from .gates import GATES

    cached = {registry_rows, firmware_rows, alerts_rows}
    return Pipeline(
        [make_step(f, cache=f in cached) for f in STEPS], gates=GATES, name="consolidate"
    )
