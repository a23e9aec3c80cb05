"""The figures behind the report, from the gold tables (pure; time-weighted roll-ups only).

Every ratio here is Σ up_s / Σ (up_s + down_s) over the rows it covers, never a mean of
per-row ratios, so a device that was eligible for an hour weighs an hour (DESIGN §4).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .data import Gold

DEFAULT_TARGET = 0.99
UNKNOWN_FIRMWARE = "unknown"
NO_LOCATION = "no location"
# A version must carry this share of the fleet's device-time to be called the worst: one
# device on a test build for an hour should not headline the report.
MIN_FIRMWARE_SHARE = 0.01
# Only a gap this large (in uptime) is worth calling a firmware or a site out.
NOTABLE_GAP = 0.005
# Up but rarely heard: below this connectivity a device-day points at the link, not the device.
LOSSY_CONNECTIVITY = 0.9


def uptime(up_s: float, down_s: float) -> float | None:
    """Σup / Σ(up+down); None when nothing was up or down."""
    den = up_s + down_s
    return up_s / den if den > 0 else None


@dataclass(frozen=True)
class Group:
    """Totals of one firmware version, site, cell or device over the report's days."""

    key: str
    up_s: float
    down_s: float
    unknown_s: float = 0.0
    device_days: int = 0

    @property
    def uptime(self) -> float | None:
        return uptime(self.up_s, self.down_s)

    @property
    def known_s(self) -> float:
        return self.up_s + self.down_s


@dataclass(frozen=True)
class Day:
    """The fleet on one day."""

    day: date
    devices: int
    up_s: float
    down_s: float
    unknown_s: float
    meeting_target: int | None = None
    with_uptime: int | None = None

    @property
    def uptime(self) -> float | None:
        return uptime(self.up_s, self.down_s)


@dataclass(frozen=True)
class DeviceDown:
    """A device's downtime over the report's days."""

    device_id: str
    site: str
    firmware_version: str
    up_s: float
    down_s: float
    alert_count: int

    @property
    def uptime(self) -> float | None:
        return uptime(self.up_s, self.down_s)


@dataclass(frozen=True)
class FirmwareVerdict:
    """The worst firmware against every other version together."""

    worst: Group
    rest: Group | None
    # of all downtime, the share on the worst version; of all device-time, its share
    down_share: float
    time_share: float


@dataclass(frozen=True)
class SiteVerdict:
    """A site below target, and its uptime without the worst firmware (None: unknown)."""

    site: Group
    without_worst_firmware: float | None


@dataclass
class Summary:
    """Everything the text and the tables of the report say."""

    first_day: date
    last_day: date
    target: float
    target_from_gold: bool
    days: list[Day]
    total: Group
    firmware: list[Group]
    sites: list[Group]
    cells: list[Group]
    firmware_verdict: FirmwareVerdict | None
    worst_sites: list[SiteVerdict]
    top_devices: list[DeviceDown]
    device_count: int
    lossy_devices: list[str]
    alert_down_correlation: float | None
    quarantine: dict[str, int] = field(default_factory=dict)
    next_steps: list[str] = field(default_factory=list)


def _col(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist()


def rollup(table: pa.Table, key: str, missing: str) -> list[Group]:
    """Sum up/down/unknown seconds per ``key`` over all days; worst uptime first."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    unknown = _col(table, "unknown_s") if "unknown_s" in table.column_names else None
    devices = _col(table, "devices") if "devices" in table.column_names else None
    for i, (k, up, down) in enumerate(
        zip(_col(table, key), _col(table, "up_s"), _col(table, "down_s"), strict=True)
    ):
        s = sums[missing if k is None else k]
        s[0] += up or 0.0
        s[1] += down or 0.0
        s[2] += (unknown[i] or 0.0) if unknown is not None else 0.0
        s[3] += (devices[i] or 0) if devices is not None else 1
    groups = [Group(k, v[0], v[1], v[2], int(v[3])) for k, v in sums.items()]
    return sorted(groups, key=_worst_first)


def _worst_first(g: Group) -> tuple[float, float, str]:
    u = g.uptime
    return (2.0 if u is None else u, -g.down_s, g.key)


def series(table: pa.Table, key: str, missing: str) -> dict[str, list[tuple[date, float | None]]]:
    """Per ``key`` the time-weighted uptime of each day it appears on, in day order."""
    sums: dict[str, dict[date, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for k, d, up, down in zip(
        _col(table, key),
        _col(table, "day"),
        _col(table, "up_s"),
        _col(table, "down_s"),
        strict=True,
    ):
        s = sums[missing if k is None else k][d]
        s[0] += up or 0.0
        s[1] += down or 0.0
    return {
        k: [(d, uptime(*v)) for d, v in sorted(days.items())] for k, days in sorted(sums.items())
    }


def fleet_days(fleet_day: pa.Table) -> list[Day]:
    """The fleet per day, from ``fleet_day`` (several rows of one day are summed)."""
    by_day: dict[date, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0, 0])
    meeting = "devices_meeting_target" in fleet_day.column_names
    with_up = "devices_with_uptime" in fleet_day.column_names
    for row in fleet_day.to_pylist():
        s = by_day[row["day"]]
        s[0] += row["devices"] or 0
        s[1] += row["up_s"] or 0.0
        s[2] += row["down_s"] or 0.0
        s[3] += row["unknown_s"] or 0.0
        s[4] += row.get("devices_meeting_target") or 0
        s[5] += row.get("devices_with_uptime") or 0
    return [
        Day(
            d,
            int(s[0]),
            s[1],
            s[2],
            s[3],
            int(s[4]) if meeting else None,
            int(s[5]) if with_up else None,
        )
        for d, s in sorted(by_day.items())
    ]


def target_of(fleet_day: pa.Table, default: float = DEFAULT_TARGET) -> tuple[float, bool]:
    """The uptime target consolidation used (from ``fleet_day``), else ``default``."""
    if "uptime_target" in fleet_day.column_names:
        values = [v for v in _col(fleet_day, "uptime_target") if v is not None]
        if values:
            return float(values[-1]), True
    return default, False


def firmware_verdict(firmware: list[Group]) -> FirmwareVerdict | None:
    """The version with the lowest uptime among those with a real share of device-time."""
    total_known = sum(g.known_s for g in firmware)
    total_down = sum(g.down_s for g in firmware)
    if total_known <= 0:
        return None
    big = [
        g
        for g in firmware
        if g.uptime is not None and g.known_s >= MIN_FIRMWARE_SHARE * total_known
    ]
    if not big:
        return None
    worst = min(big, key=_worst_first)
    others = [g for g in firmware if g.key != worst.key]
    rest = None
    if others:
        rest = Group(
            "all other versions",
            sum(g.up_s for g in others),
            sum(g.down_s for g in others),
            sum(g.unknown_s for g in others),
            sum(g.device_days for g in others),
        )
    return FirmwareVerdict(
        worst,
        rest,
        worst.down_s / total_down if total_down > 0 else 0.0,
        worst.known_s / total_known,
    )


def notable(v: FirmwareVerdict | None) -> bool:
    """Whether the worst firmware is clearly worse than the rest (worth naming as a cause)."""
    if v is None or v.rest is None or v.worst.uptime is None or v.rest.uptime is None:
        return False
    return v.rest.uptime - v.worst.uptime >= NOTABLE_GAP


def site_without_firmware(
    device_firmware_day: pa.Table, device_day: pa.Table, version: str
) -> dict[str, float | None]:
    """Per site the uptime of the time not spent on ``version``."""
    site_of = dict(
        zip(
            zip(_col(device_day, "device_id"), _col(device_day, "day"), strict=True),
            _col(device_day, "site"),
            strict=True,
        )
    )
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in device_firmware_day.to_pylist():
        fw = row["firmware_version"] if row["firmware_version"] is not None else UNKNOWN_FIRMWARE
        site = site_of.get((row["device_id"], row["day"]))
        if fw == version or site is None:
            continue
        sums[site][0] += row["up_s"] or 0.0
        sums[site][1] += row["down_s"] or 0.0
    return {site: uptime(*v) for site, v in sums.items()}


def top_devices(device_day: pa.Table, n: int) -> tuple[list[DeviceDown], int]:
    """The ``n`` devices with the most downtime, and how many devices there are."""
    # Grouped in Arrow: a year of a large fleet is millions of device-days.
    g = device_day.group_by("device_id").aggregate(
        [("up_s", "sum"), ("down_s", "sum"), ("alert_count", "sum")]
    )
    top = g.sort_by([("down_s_sum", "descending"), ("device_id", "ascending")]).slice(0, n)
    # site and firmware as of each top device's latest day (only their rows are read)
    mine = device_day.filter(pc.is_in(device_day["device_id"], value_set=top["device_id"]))
    latest: dict[str, tuple[str | None, str | None]] = {}
    for row in (
        mine.sort_by([("day", "ascending")])
        .select(["device_id", "site", "firmware_version"])
        .to_pylist()
    ):
        latest[row["device_id"]] = (row["site"], row["firmware_version"])
    devices = []
    for row in top.to_pylist():
        site, fw = latest[row["device_id"]]
        devices.append(
            DeviceDown(
                row["device_id"],
                site or "",
                fw or UNKNOWN_FIRMWARE,
                row["up_s_sum"] or 0.0,
                row["down_s_sum"] or 0.0,
                row["alert_count_sum"] or 0,
            )
        )
    return [d for d in devices if d.down_s > 0], g.num_rows


def lossy_devices(device_day: pa.Table, target: float) -> list[str]:
    """Devices up (at target) on some day while heard in under 90 % of their heartbeat slots."""
    t = device_day.filter(
        pc.and_(
            pc.greater_equal(device_day["device_uptime"], target),
            pc.less(device_day["connectivity_ratio"], LOSSY_CONNECTIVITY),
        )
    )
    return sorted(set(_col(t, "device_id")))


def correlation(xs: pa.ChunkedArray, ys: pa.ChunkedArray) -> float | None:
    """Pearson's r over the rows where both are set; None with < 3 points or a constant side."""
    both = pc.and_(pc.is_valid(xs), pc.is_valid(ys))
    x = pc.filter(xs, both).to_numpy().astype(float)
    y = pc.filter(ys, both).to_numpy().astype(float)
    if len(x) < 3:
        return None
    x, y = x - x.mean(), y - y.mean()
    sxx, syy = float((x * x).sum()), float((y * y).sum())
    if sxx <= 0 or syy <= 0:
        return None
    return float((x * y).sum()) / math.sqrt(sxx * syy)


def quarantine_reasons(quarantine: pa.Table | None) -> dict[str, int]:
    """Rows set aside per reason, most frequent first."""
    if quarantine is None or quarantine.num_rows == 0:
        return {}
    counts: dict[str, int] = defaultdict(int)
    for r in _col(quarantine, "reason"):
        counts[r or "(no reason)"] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def pct(value: float | None, digits: int = 1) -> str:
    """0.9153 → ``91.5%``; None → ``n/a``."""
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def pct_vs(value: float | None, target: float) -> str:
    """``pct`` with enough digits to show the value on its own side of the target: 0.98996
    against 0.99 reads 98.996%, never a red "99.0%"."""
    if value is None:
        return pct(value)
    for digits in (1, 2):
        if (round(value * 100, digits) >= target * 100) == (value >= target):
            return pct(value, digits)
    return pct(value, 3)


def hours(seconds: float) -> str:
    """Seconds as hours with one decimal: ``12.5 h``."""
    return f"{seconds / 3600:,.1f} h"


def next_steps(s: Summary) -> list[str]:
    """Where to look next, most likely cause first; each line names what to check."""
    out: list[str] = []
    v = s.firmware_verdict
    if v is not None and v.rest is not None and notable(v):
        out.append(
            f"Firmware {v.worst.key}: {pct(v.worst.uptime)} uptime against {pct(v.rest.uptime)} "
            f"on all other versions; it ran {pct(v.time_share, 0)} of device-time but holds "
            f"{pct(v.down_share, 0)} of all downtime. Halt its rollout and read the crash "
            "and watchdog alerts of its devices."
        )
    for sv in s.worst_sites:
        u = sv.site.uptime
        if u is None or u >= s.target:
            continue
        if sv.without_worst_firmware is not None and v is not None:
            if sv.without_worst_firmware >= s.target:
                out.append(
                    f"Site {sv.site.key}: {pct(u)}, but {pct(sv.without_worst_firmware)} without "
                    f"firmware {v.worst.key}: the site is fine, the firmware is not."
                )
            else:
                out.append(
                    f"Site {sv.site.key}: {pct(u)}, and still {pct(sv.without_worst_firmware)} "
                    f"without firmware {v.worst.key}: check the site itself (power, network, "
                    "gateway)."
                )
        else:
            out.append(f"Site {sv.site.key}: {pct(u)} uptime, below the {pct(s.target)} target.")
    if s.top_devices:
        names = ", ".join(d.device_id for d in s.top_devices[:3])
        out.append(f"Devices with the most downtime: {names} (see the table below).")
    if s.lossy_devices:
        shown = ", ".join(s.lossy_devices[:5]) + (" …" if len(s.lossy_devices) > 5 else "")
        out.append(
            f"{len(s.lossy_devices)} device(s) were up but heard in under "
            f"{pct(LOSSY_CONNECTIVITY, 0)} of their heartbeat slots on some day ({shown}): "
            "lossy links, not outages; check their radio or gateway coverage."
        )
    eligible = s.total.known_s + s.total.unknown_s
    if eligible > 0 and s.total.unknown_s / eligible >= 0.01:
        out.append(
            f"{pct(s.total.unknown_s / eligible)} of eligible time is unknown (no gateway could "
            "hear the device): check gateway uptime and uploads before trusting those days."
        )
    if s.quarantine:
        reason, n = next(iter(s.quarantine.items()))
        out.append(
            f"{sum(s.quarantine.values()):,} row(s) were quarantined, most for “{reason}” ({n:,})."
        )
    return out


def summarize(
    gold: Gold, *, default_target: float = DEFAULT_TARGET, top_n: int = 15, sites_n: int = 3
) -> Summary:
    """All figures of the report from the gold tables."""
    target, from_gold = target_of(gold.fleet_day, default_target)
    days = fleet_days(gold.fleet_day)
    firmware = rollup(gold.firmware_day, "firmware_version", UNKNOWN_FIRMWARE)
    sites = rollup(gold.site_day, "site", "(no site)")
    cells = rollup(gold.geo_day, "geohash5", NO_LOCATION)
    total = Group(
        "fleet",
        sum(d.up_s for d in days),
        sum(d.down_s for d in days),
        sum(d.unknown_s for d in days),
        sum(d.devices for d in days),
    )
    verdict = firmware_verdict(firmware)
    without: dict[str, float | None] = {}
    if notable(verdict) and verdict is not None and gold.device_firmware_day is not None:
        without = site_without_firmware(
            gold.device_firmware_day, gold.device_day, verdict.worst.key
        )
    worst_sites = [
        SiteVerdict(g, without.get(g.key)) for g in sites[:sites_n] if g.uptime is not None
    ]
    top, n_devices = top_devices(gold.device_day, top_n)
    dd = gold.device_day
    span = pc.min_max(dd["day"])
    summary = Summary(
        first_day=span["min"].as_py(),
        last_day=span["max"].as_py(),
        target=target,
        target_from_gold=from_gold,
        days=days,
        total=total,
        firmware=firmware,
        sites=sites,
        cells=cells,
        firmware_verdict=verdict,
        worst_sites=worst_sites,
        top_devices=top,
        device_count=n_devices,
        lossy_devices=lossy_devices(dd, target),
        alert_down_correlation=correlation(dd["alert_count"], dd["down_s"]),
        quarantine=quarantine_reasons(gold.quarantine),
    )
    summary.next_steps = next_steps(summary)
    return summary


OTHER_VERSIONS = "other versions"


def firmware_series(
    firmware_day: pa.Table, s: Summary, limit: int
) -> dict[str, list[tuple[date, float | None]]]:
    """Per-day uptime of each version; past ``limit`` lines, the versions with the least
    device-time (never the worst) are pooled, time-weighted, as one line."""
    if len(s.firmware) <= limit:
        return series(firmware_day, "firmware_version", UNKNOWN_FIRMWARE)
    worst = s.firmware_verdict.worst.key if s.firmware_verdict else None
    by_time = sorted(s.firmware, key=lambda g: (g.key != worst, -g.known_s, g.key))
    keep = {g.key for g in by_time[: limit - 1]}
    names = [
        (v if v is not None else UNKNOWN_FIRMWARE) for v in _col(firmware_day, "firmware_version")
    ]
    pooled = firmware_day.set_column(
        firmware_day.column_names.index("firmware_version"),
        "firmware_version",
        pa.array([n if n in keep else OTHER_VERSIONS for n in names], pa.string()),
    )
    return series(pooled, "firmware_version", UNKNOWN_FIRMWARE)
