"""Gold: the published tables, from silver, as Ibis expressions (one definition, two engines).

Seconds are float64 from integer milliseconds, so sums are exact and both engines agree.
Roll-ups are time-weighted: Σ up_s / Σ (up_s + down_s), never a mean of ratios.
"""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from .geo import geohash_from_cells

KEYS = ["device_id", "day_idx"]


def _ratio(num: ir.NumericValue, den: ir.NumericValue) -> ir.FloatingValue:
    return ibis.ifelse(den > 0, num / den, ibis.null("float64"))


def device_day(
    targets: ir.Table,
    devices: ir.Table,
    segment_times: ir.Table,
    connectivity: ir.Table,
    day_readings: ir.Table,
    alert_day: ir.Table,
) -> ir.Table:
    """One row per device and day: up/down/unknown seconds, uptime, connectivity, alerts."""
    s = segment_times
    per_day = s.group_by(KEYS).aggregate(
        eligible_ms=s.eligible_ms.sum(),
        up_ms=s.up_ms.sum(),
        down_ms=s.down_ms.sum(),
        unknown_ms=s.unknown_ms.sum(),
        # the version running at the end of the device's eligible part of the day
        firmware_version=s.firmware_version.argmax(s.ws),
    )
    d = devices.select(
        p_device=devices.device_id,
        site=devices.site,
        geohash5=geohash_from_cells(devices.geo_x, devices.geo_y, 5),
        geohash6=geohash_from_cells(devices.geo_x, devices.geo_y, 6),
        in_registry=devices.in_registry,
    )
    t = targets.select("device_id", "day_idx", "day", window_ms=targets.e1 - targets.e0)
    j = (
        t.inner_join(per_day, KEYS)
        .inner_join(d, t.device_id == d.p_device)
        .left_join(connectivity, KEYS)
        .left_join(day_readings, KEYS)
        .left_join(alert_day, KEYS)
    )
    up = j.up_ms / 1000.0
    down = j.down_ms / 1000.0
    observed = j.slots_observed.fill_null(0)
    holding = j.slots_with_reading.fill_null(0)
    return j.select(
        "day",
        "device_id",
        "site",
        "geohash5",
        "geohash6",
        "firmware_version",
        # from the registry window, not from the segments: the gate then checks that the
        # firmware cut neither lost nor doubled time
        eligible_s=j.window_ms / 1000.0,
        up_s=up,
        down_s=down,
        unknown_s=j.unknown_ms / 1000.0,
        device_uptime=_ratio(up, up + down),
        # LEAST skips NULLs on both engines, so the null case is decided outside it.
        connectivity_ratio=ibis.ifelse(
            observed > 0,
            ibis.least(holding.cast("float64") / observed.cast("float64"), 1.0),
            ibis.null("float64"),
        ),
        slots_observed=observed,
        slots_with_reading=holding,
        readings=j.readings.fill_null(0),
        alert_count=j.alert_count.fill_null(0),
        alert_down_s=j.alert_down_ms.fill_null(0.0) / 1000.0,
        in_registry=j.in_registry,
    )


def device_firmware_day(targets: ir.Table, segment_times: ir.Table) -> ir.Table:
    """Per device, day and firmware version: the seconds spent on that version."""
    s = segment_times
    g = s.group_by([*KEYS, "firmware_version"]).aggregate(
        eligible_ms=s.eligible_ms.sum(),
        up_ms=s.up_ms.sum(),
        down_ms=s.down_ms.sum(),
        unknown_ms=s.unknown_ms.sum(),
    )
    t = targets.select("device_id", "day_idx", "day")
    j = t.inner_join(g, KEYS)
    return j.select(
        "day",
        "device_id",
        "firmware_version",
        eligible_s=j.eligible_ms / 1000.0,
        up_s=j.up_ms / 1000.0,
        down_s=j.down_ms / 1000.0,
        unknown_s=j.unknown_ms / 1000.0,
    )


def _rollup(t: ir.Table, by: list[str], uptime_name: str) -> ir.Table:
    g = t.group_by(by).aggregate(
        devices=t.device_id.nunique(),
        eligible_s=t.eligible_s.sum(),
        up_s=t.up_s.sum(),
        down_s=t.down_s.sum(),
        unknown_s=t.unknown_s.sum(),
    )
    return g.mutate(**{uptime_name: _ratio(g.up_s, g.up_s + g.down_s)})


def fleet_day(device_day: ir.Table, uptime_target: float) -> ir.Table:
    """Per day: the fleet's time-weighted uptime and how many devices met the target."""
    t = device_day
    g = _rollup(t, ["day"], "fleet_uptime")
    met = t.group_by("day").aggregate(
        devices_meeting_target=(t.device_uptime >= uptime_target).cast("int64").sum(),
        devices_with_uptime=t.device_uptime.notnull().cast("int64").sum(),
        alert_count=t.alert_count.sum(),
    )
    j = g.inner_join(met, "day")
    return j.select(
        "day",
        "devices",
        "eligible_s",
        "up_s",
        "down_s",
        "unknown_s",
        "fleet_uptime",
        devices_meeting_target=j.devices_meeting_target.fill_null(0),
        devices_with_uptime=j.devices_with_uptime.fill_null(0),
        uptime_target=ibis.literal(float(uptime_target)),
        alert_count=j.alert_count,
    )


def firmware_day(device_firmware_day: ir.Table) -> ir.Table:
    """Per day and firmware version (null: before any known install): time-weighted uptime."""
    g = _rollup(device_firmware_day, ["day", "firmware_version"], "device_uptime")
    return g.select(
        "day",
        "firmware_version",
        "devices",
        "eligible_s",
        "up_s",
        "down_s",
        "unknown_s",
        "device_uptime",
    )


def site_day(device_day: ir.Table) -> ir.Table:
    """Per day and site: time-weighted uptime, downtime and alerts."""
    t = device_day
    g = _rollup(t, ["day", "site"], "device_uptime")
    a = t.group_by(["day", "site"]).aggregate(alert_count=t.alert_count.sum())
    j = g.inner_join(a, ["day", "site"])
    return j.select(
        "day",
        "site",
        "devices",
        "eligible_s",
        "up_s",
        "down_s",
        "unknown_s",
        "device_uptime",
        "alert_count",
    )


def geo_day(device_day: ir.Table) -> ir.Table:
    """Per day and geohash-5 cell (null: no location in the registry): time-weighted uptime."""
    g = _rollup(device_day, ["day", "geohash5"], "device_uptime")
    return g.select(
        "day",
        "geohash5",
        "devices",
        "eligible_s",
        "up_s",
        "down_s",
        "unknown_s",
        "device_uptime",
    )


def agent_device_day(agent_kpis: ir.Table, days: ir.Table) -> ir.Table:
    """Per gateway, device and day of ``days``: the agent's own KPI row, its latest copy.

    An agent ships a row again whenever its figures change; the latest is the copy in the
    batch with the highest sequence of that gateway (batch ids are ``<gateway>-<zero-padded
    sequence>``, so their order within a gateway is the sequence's), never the agent's
    clock, which may have jumped. The remaining columns only make the order total.
    """
    k = agent_kpis.semi_join(days, "day")
    w = ibis.window(
        group_by=["gateway_id", "device_id", "day"],
        order_by=[
            ibis.desc(c)
            for c in (
                "batch_id",
                "computed_at",
                "site",
                "eligible_s",
                "up_s",
                "down_s",
                "unknown_s",
                "device_uptime",
                "connectivity_ratio",
            )
        ],
    )
    ranked = k.mutate(copy_rank=ibis.row_number().over(w))
    # the columns of bronze.agent_kpis, as they came
    return ranked.filter(ranked.copy_rank == 0).drop("copy_rank")


def quarantine(quarantine_rows: ir.Table) -> ir.Table:
    """Rows set aside, with the reason and where they came from; ``day`` is the row's UTC day."""
    q = quarantine_rows
    return q.select(
        day=q.ts.date(),
        source=q.source,
        batch_id=q.batch_id,
        gateway_id=q.gateway_id,
        record_type=q.record_type,
        device_id=q.device_id,
        kind=q.kind,
        ts=q.ts,
        seq=q.seq,
        reason=q.reason,
        ingested_at=q.ingested_at,
    )
