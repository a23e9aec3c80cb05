"""Silver: up, observed and covered intervals, firmware validity and eligible windows (Ibis only).

All times are epoch milliseconds as float64 (heartbeats may be fractional seconds). An
interval ``[s, e)`` is half open. Every window orders by a full tie-breaker, so DuckDB and
Spark give the same rows. See docs/kpi.md for the definitions these follow.
"""

from __future__ import annotations

import ibis
import ibis.expr.types as ir
from ibis import _

from schemas import DEFAULT_HEARTBEAT_S

from .bronze import QUARANTINE_SCHEMA
from .geo import cells

DAY_MS = 86_400_000
# Open bounds of intervals (about year 33,000): finite, so sums and least/greatest work.
FAR_PAST = -1.0e15
FAR_FUTURE = 1.0e15


# -- interval helpers ---------------------------------------------------------------------


def union_all(*tables: ir.Table) -> ir.Table:
    """UNION ALL of tables with the same columns, nullability aside."""
    nullable = [t.cast({c: d.copy(nullable=True) for c, d in t.schema().items()}) for t in tables]
    return ibis.union(*nullable, distinct=False)


def merge_intervals(t: ir.Table, key: str) -> ir.Table:
    """The union of the ``[s, e)`` intervals of each ``key`` as disjoint islands."""
    t = t.filter(t.e > t.s).select(key, "s", "e")
    before = ibis.window(group_by=key, order_by=["s", "e"], rows=(None, -1))
    upto = ibis.window(group_by=key, order_by=["s", "e"], rows=(None, 0))
    # reach as its own column: used twice inline, the window would be computed twice
    t = t.mutate(reach=t.e.max().over(before))
    t = t.mutate(starts=(t.reach.isnull() | (t.s > t.reach)).cast("int64"))
    # Rows tied on (s, e) are identical, so any order among them gives the same islands.
    t = t.mutate(island=t.starts.sum().over(upto))
    return t.group_by([key, "island"]).aggregate(s=_.s.min(), e=_.e.max()).drop("island")


def overlap_ms(intervals: ir.Table, windows: ir.Table, keys: list[str], name: str) -> ir.Table:
    """Per window (``keys``, ``ws``, ``we``): total length of ``intervals`` inside it.

    Intervals of one device must be disjoint (islands, or up intervals) for this to be a
    measure of their union.
    """
    i = intervals.select(i_device=intervals.device_id, i_s=intervals.s, i_e=intervals.e)
    j = windows.inner_join(
        i,
        [windows.device_id == i.i_device, i.i_s < windows.we, i.i_e > windows.ws],
    )
    length = ibis.least(j.i_e, j.we) - ibis.greatest(j.i_s, j.ws)
    return j.group_by(keys).aggregate(**{name: length.sum()})


# -- devices and their windows ------------------------------------------------------------


SEEN_ORDER = ("event_ms", "ts_ms", "kind", "seq", "site")


def seen_devices(bronze: ir.Table, known_devices: ir.Table) -> ir.Table:
    """Every device ever read, with the site of its latest reading (earlier runs included)."""
    cols = ["device_id", *SEEN_ORDER]
    both = union_all(bronze.select(*cols), known_devices.select(*cols))
    w = ibis.window(group_by="device_id", order_by=[ibis.desc(c) for c in SEEN_ORDER])
    return both.mutate(r=ibis.row_number().over(w)).filter(_.r == 0).drop("r")


def devices(registry: ir.Table, seen_devices: ir.Table, default_gap_k: float) -> ir.Table:
    """Every device in the registry or in the readings, with heartbeat, gap and location."""
    seen = seen_devices.select(seen_device=_.device_id, seen_site=_.site)
    reg = registry.select(
        reg_device=registry.device_id,
        reg_site=registry.site,
        lat=registry.lat,
        lon=registry.lon,
        heartbeat_s=registry.heartbeat_s,
        gap_k=registry.gap_k,
        commissioned_at=registry.commissioned_at,
        decommissioned_at=registry.decommissioned_at,
    )
    j = reg.outer_join(seen, reg.reg_device == seen.seen_device)
    h_ms = j.heartbeat_s.fill_null(DEFAULT_HEARTBEAT_S) * 1000.0
    k = j.gap_k.cast("float64").fill_null(float(default_gap_k))
    out = j.select(
        device_id=j.reg_device.fill_null(j.seen_device),
        in_registry=j.reg_device.notnull(),
        site=j.reg_site.fill_null(j.seen_site),
        lat=j.lat,
        lon=j.lon,
        h_ms=h_ms,
        g_ms=k * h_ms,
        comm_ms=_ms_or(j.commissioned_at, FAR_PAST),
        decomm_ms=_ms_or(j.decommissioned_at, FAR_FUTURE),
    )
    gx, gy = cells(out.lat, out.lon)
    return out.mutate(geo_x=gx, geo_y=gy)


def _ms_or(col: ir.TimestampValue, default: float) -> ir.FloatingValue:
    from .bronze import epoch_ms

    return ibis.ifelse(col.isnull(), default, epoch_ms(col).cast("float64"))


def targets(devices: ir.Table, days: ir.Table, scope_devices: ir.Table) -> ir.Table:
    """(device, day) pairs to compute with the eligible window ``[e0, e1)`` of each (> 0 long).

    On a day with ``all_devices`` every device counts; on the others only the devices in
    ``scope_devices`` (those a new batch can have changed) are recomputed.
    """
    d = days.select("day_idx", "day", "all_devices")
    sc = scope_devices.select(scope_device=scope_devices.device_id).distinct()
    j = devices.cross_join(d)
    j = j.left_join(sc, j.device_id == sc.scope_device)
    j = j.filter(j.all_devices | j.scope_device.notnull())
    d0 = (j.day_idx * DAY_MS).cast("float64")
    j = j.mutate(d0=d0, d1=d0 + float(DAY_MS))
    j = j.mutate(e0=ibis.greatest(j.d0, j.comm_ms), e1=ibis.least(j.d1, j.decomm_ms))
    return j.filter(j.e1 > j.e0).select(
        "device_id", "day_idx", "day", "d0", "d1", "e0", "e1", "h_ms"
    )


def firmware_windows(firmware: ir.Table, devices: ir.Table) -> ir.Table:
    """Which firmware ran when: ``[installed_at, next install)``, null before the first."""
    from .bronze import epoch_ms

    f = firmware.select(
        "device_id", "firmware_version", inst=epoch_ms(firmware.installed_at).cast("float64")
    )
    w = ibis.window(group_by="device_id", order_by=["inst", "firmware_version"])
    runs = f.mutate(nxt=f.inst.lead().over(w)).select(
        "device_id", "firmware_version", s=_.inst, e=_.nxt.fill_null(FAR_FUTURE)
    )
    first = f.group_by("device_id").aggregate(e=f.inst.min())
    before = first.select(
        "device_id",
        firmware_version=ibis.null("string"),
        s=ibis.literal(FAR_PAST),
        e=first.e,
    )
    known = f.select(fw_device=f.device_id)
    d = devices.select("device_id").distinct()
    never = d.anti_join(known, d.device_id == known.fw_device).select(
        "device_id",
        firmware_version=ibis.null("string"),
        s=ibis.literal(FAR_PAST),
        e=ibis.literal(FAR_FUTURE),
    )
    return union_all(runs, before, never)


def segments(targets: ir.Table, firmware_windows: ir.Table) -> ir.Table:
    """Eligible device-days cut where the firmware changes: ``[ws, we)`` with its version."""
    f = firmware_windows.select(
        f_device=firmware_windows.device_id,
        firmware_version=firmware_windows.firmware_version,
        f_s=firmware_windows.s,
        f_e=firmware_windows.e,
    )
    t = targets
    j = t.inner_join(f, [t.device_id == f.f_device, f.f_s < t.e1, f.f_e > t.e0])
    j = j.select(
        "device_id",
        "day_idx",
        "firmware_version",
        ws=ibis.greatest(j.e0, j.f_s),
        we=ibis.least(j.e1, j.f_e),
    )
    return j.filter(j.we > j.ws)


# -- up, observed, covered ----------------------------------------------------------------


def up_intervals(bronze: ir.Table, devices: ir.Table) -> ir.Table:
    """Up time from consecutive readings: ``[t1, t2)`` within the gap tolerance, else h/2."""
    d = devices.select(p_device=devices.device_id, h_ms=devices.h_ms, g_ms=devices.g_ms)
    r = bronze.select("device_id", "event_ms", "is_offline", "kind", "seq", "ts_ms")
    r = r.inner_join(d, r.device_id == d.p_device)
    # At one instant an offline takes effect after the other readings; (kind, seq, ts)
    # makes the order total (they and device_id are the dedup key).
    w = ibis.window(
        group_by="device_id", order_by=["event_ms", "is_offline", "kind", "seq", "ts_ms"]
    )
    r = r.mutate(t1=r.event_ms.cast("float64"), t2=r.event_ms.lead().over(w).cast("float64"))
    half = r.t1 + r.h_ms / 2.0
    end = ibis.cases(
        (r.t2.isnull(), half),
        ((r.t2 - r.t1) <= r.g_ms, r.t2),
        else_=half,
    )
    r = r.filter(r.is_offline == 0).select("device_id", s=r.t1, e=end)
    return r.filter(r.e > r.s)


def device_gateways(gateway_readings: ir.Table, known_device_gateways: ir.Table) -> ir.Table:
    """Which gateways reported which device (any reading, any time, earlier runs included)."""
    return union_all(
        gateway_readings.select("device_id", "gateway_id"),
        known_device_gateways.select("device_id", "gateway_id"),
    ).distinct()


def gateway_hmax(device_gateways: ir.Table, devices: ir.Table) -> ir.Table:
    """Per gateway the longest heartbeat of the devices it reported."""
    d = devices.select(p_device=devices.device_id, h_ms=devices.h_ms)
    j = device_gateways.left_join(d, device_gateways.device_id == d.p_device)
    h = j.h_ms.fill_null(DEFAULT_HEARTBEAT_S * 1000.0)
    return j.group_by("gateway_id").aggregate(hmax_ms=h.max())


def gateway_observed(
    gateway_readings: ir.Table, observations: ir.Table, gateway_hmax: ir.Table
) -> ir.Table:
    """When each gateway could hear its devices: its observations and 2·h_max after readings."""
    r = gateway_readings.select("gateway_id", "event_ms").distinct()
    r = r.inner_join(gateway_hmax, "gateway_id")
    reach = 2.0 * r.hmax_ms
    w = ibis.window(group_by="gateway_id", order_by="event_ms")
    upto = ibis.window(group_by="gateway_id", order_by="event_ms", rows=(None, 0))
    r = r.mutate(t=r.event_ms.cast("float64"), reach=reach)
    # All intervals of one gateway have the same length, so the previous one reaches
    # furthest: a lag is enough where a general union needs a running max.
    r = r.mutate(prev=r.t.lag().over(w))
    r = r.mutate(starts=(r.prev.isnull() | (r.t > r.prev + r.reach)).cast("int64"))
    r = r.mutate(island=r.starts.sum().over(upto))
    from_readings = r.group_by(["gateway_id", "island"]).aggregate(
        s=r.t.min(), e=r.t.max() + r.reach.max()
    )
    both = union_all(
        from_readings.select("gateway_id", "s", "e"),
        observations.select("gateway_id", "s", "e"),
    )
    return merge_intervals(both, "gateway_id")


def device_observed(device_gateways: ir.Table, gateway_observed: ir.Table) -> ir.Table:
    """Per device the union of the observed time of every gateway that ever reported it."""
    g = gateway_observed.select(g_gateway=_.gateway_id, s=_.s, e=_.e)
    j = device_gateways.inner_join(g, device_gateways.gateway_id == g.g_gateway)
    return merge_intervals(j.select("device_id", "s", "e"), "device_id")


def covered(up_intervals: ir.Table, device_observed: ir.Table) -> ir.Table:
    """Per device the union of up and observed time: what is not unknown."""
    both = union_all(
        up_intervals.select("device_id", "s", "e"), device_observed.select("device_id", "s", "e")
    )
    return merge_intervals(both, "device_id")


# -- measures per segment -----------------------------------------------------------------


def segment_times(segments: ir.Table, up_intervals: ir.Table, covered: ir.Table) -> ir.Table:
    """Per segment: eligible, up, down and unknown milliseconds."""
    keys = ["device_id", "day_idx", "ws"]
    up = overlap_ms(up_intervals, segments, keys, "up_ms")
    cov = overlap_ms(covered, segments, keys, "cover_ms")
    s = segments
    j = s.left_join(up, keys).left_join(cov, keys)
    up_ms = j.up_ms.fill_null(0.0)
    cover_ms = j.cover_ms.fill_null(0.0)
    eligible = j.we - j.ws
    return j.select(
        "device_id",
        "day_idx",
        "firmware_version",
        "ws",
        "we",
        eligible_ms=eligible,
        up_ms=up_ms,
        down_ms=cover_ms - up_ms,
        unknown_ms=eligible - cover_ms,
    )


def connectivity(targets: ir.Table, device_observed: ir.Table, bronze: ir.Table) -> ir.Table:
    """Per device-day: heartbeat slots starting in observed eligible time, and those with a reading.

    Slot i of day D is ``[D0 + i·h, D0 + (i+1)·h)``. An island ``[a, b)`` holds the slot
    starts ``ceil((a - D0)/h) <= i < ceil((b - D0)/h)``; islands are disjoint, so their
    slot ranges are too.
    """
    o = device_observed.select(o_device=_.device_id, o_s=_.s, o_e=_.e)
    t = targets
    j = t.inner_join(o, [t.device_id == o.o_device, o.o_s < t.e1, o.o_e > t.e0])
    a = ibis.greatest(j.o_s, j.e0)
    b = ibis.least(j.o_e, j.e1)
    ranges = j.select(
        "device_id",
        "day_idx",
        lo=((a - j.d0) / j.h_ms).ceil().cast("int64"),
        hi=((b - j.d0) / j.h_ms).ceil().cast("int64"),
    ).filter(_.hi > _.lo)
    counted = ranges.group_by(["device_id", "day_idx"]).aggregate(
        slots_observed=(ranges.hi - ranges.lo).sum()
    )
    r = bronze.select("device_id", "event_ms")
    r = r.mutate(r_day=(r.event_ms // DAY_MS).cast("int64"))
    tt = t.select(t_device=t.device_id, t_day=t.day_idx, d0=t.d0, h_ms=t.h_ms)
    rj = r.inner_join(tt, [r.device_id == tt.t_device, r.r_day == tt.t_day])
    slots = rj.select(
        "device_id",
        day_idx=rj.t_day,
        slot=((rj.event_ms.cast("float64") - rj.d0) / rj.h_ms).floor().cast("int64"),
    ).distinct()
    rg = ranges.select(g_device=_.device_id, g_day=_.day_idx, lo=_.lo, hi=_.hi)
    sj = slots.inner_join(
        rg,
        [
            slots.device_id == rg.g_device,
            slots.day_idx == rg.g_day,
            slots.slot >= rg.lo,
            slots.slot < rg.hi,
        ],
    )
    holding = sj.group_by(["device_id", "day_idx"]).aggregate(slots_with_reading=sj.count())
    keys = ["device_id", "day_idx"]
    out = t.select(*keys).left_join(counted, keys).left_join(holding, keys)
    return out.select(
        *keys,
        slots_observed=out.slots_observed.fill_null(0),
        slots_with_reading=out.slots_with_reading.fill_null(0),
    )


def day_readings(targets: ir.Table, bronze: ir.Table) -> ir.Table:
    """Per device-day: how many deduplicated readings have their event time in the day."""
    r = bronze.select("device_id", r_day=(bronze.event_ms // DAY_MS).cast("int64"))
    n = r.group_by(["device_id", "r_day"]).aggregate(readings=r.count())
    t = targets.select("device_id", "day_idx")
    j = t.left_join(n, [t.device_id == n.device_id, t.day_idx == n.r_day])
    return j.select(t.device_id, t.day_idx, readings=j.readings.fill_null(0))


# -- alerts ---------------------------------------------------------------------------------


def alert_intervals(alerts: ir.Table) -> ir.Table:
    """Alerts as ``[raised_at, cleared_at)``; an alert still open runs to the far future."""
    from .bronze import epoch_ms

    a = alerts.mutate(
        s=epoch_ms(alerts.raised_at).cast("float64"),
        e=ibis.ifelse(
            alerts.cleared_at.isnull(),
            FAR_FUTURE,
            epoch_ms(alerts.cleared_at).cast("float64"),
        ),
    )
    return a.filter(a.e >= a.s).select("alert_id", "device_id", "severity", "type", "s", "e")


def alert_quarantine(alerts: ir.Table) -> ir.Table:
    """Alerts cleared before they were raised: kept in quarantine, not counted."""
    from .bronze import epoch_ms

    a = alerts.filter(alerts.cleared_at.notnull() & (alerts.cleared_at < alerts.raised_at))
    return a.select(
        source=ibis.literal("alerts"),
        batch_id=ibis.null("string"),
        gateway_id=ibis.null("string"),
        record_type=ibis.literal("alert"),
        device_id=a.device_id,
        kind=a.type,
        ts=a.raised_at,
        ts_ms=epoch_ms(a.raised_at),
        seq=ibis.null("int64"),
        reason=ibis.literal("alert ")
        .concat(a.alert_id)
        .concat(ibis.literal(" is cleared before it is raised")),
        ingested_at=ibis.null("timestamp('UTC')"),
    ).cast(QUARANTINE_SCHEMA)


def alert_day(
    targets: ir.Table, alert_intervals: ir.Table, up_intervals: ir.Table, covered: ir.Table
) -> ir.Table:
    """Per device-day: alerts open during the day, and eligible downtime while one was open."""
    t = targets
    a = alert_intervals.select(a_device=_.device_id, alert_id=_.alert_id, a_s=_.s, a_e=_.e)
    j = t.inner_join(a, [t.device_id == a.a_device, a.a_s < t.d1, a.a_e >= t.d0])
    # Open at some instant of the day; an alert cleared as it was raised counts on its day.
    j = j.filter((j.a_e > j.d0) | (j.a_s >= j.d0))
    counts = j.group_by(["device_id", "day_idx"]).aggregate(alert_count=j.alert_id.nunique())

    islands = merge_intervals(alert_intervals.select("device_id", "s", "e"), "device_id")
    isl = islands.select(x_device=_.device_id, x_s=_.s, x_e=_.e)

    def clip(intervals: ir.Table) -> ir.Table:
        k = intervals.inner_join(
            isl, [intervals.device_id == isl.x_device, isl.x_s < intervals.e, isl.x_e > intervals.s]
        )
        return k.select("device_id", s=ibis.greatest(k.s, k.x_s), e=ibis.least(k.e, k.x_e))

    win = t.select("device_id", "day_idx", ws=t.e0, we=t.e1)
    keys = ["device_id", "day_idx"]
    cov = overlap_ms(clip(covered), win, keys, "alert_cover_ms")
    up = overlap_ms(clip(up_intervals), win, keys, "alert_up_ms")
    out = t.select(*keys).left_join(counts, keys).left_join(cov, keys).left_join(up, keys)
    return out.select(
        *keys,
        alert_count=out.alert_count.fill_null(0),
        alert_down_ms=out.alert_cover_ms.fill_null(0.0) - out.alert_up_ms.fill_null(0.0),
    )
