"""Ground truth from the simulated device state (never from messages): per device-day and roll-ups.

``device_day`` counts, for each UTC day, the seconds of the device's eligible time it was up
and down. Roll-ups are time-weighted (Σ up / Σ (up + down)) like DESIGN §4; down and up
seconds are attributed to the firmware running at that moment and to the device's home site.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime

from .fleet import DeviceSpec, Segment

DAY_S = 86400


@dataclass(frozen=True, slots=True)
class DeviceDay:
    """One row of truth/device_day.parquet."""

    day: date
    device_id: str
    up_s: int
    down_s: int

    @property
    def device_uptime(self) -> float | None:
        total = self.up_s + self.down_s
        return None if total == 0 else self.up_s / total


def day_of(start_s: int, index: int) -> date:
    return datetime.fromtimestamp(start_s + index * DAY_S, tz=UTC).date()


def _split_by_day(
    segments: list[Segment], start_s: int, days: int
) -> dict[int, list[tuple[Segment, int]]]:
    """Day index → (segment, seconds of it inside that day)."""
    out: dict[int, list[tuple[Segment, int]]] = defaultdict(list)
    for seg in segments:
        first = max(0, (seg.start_s - start_s) // DAY_S)
        last = min(days - 1, (seg.end_s - 1 - start_s) // DAY_S)
        for d in range(first, last + 1):
            lo = max(seg.start_s, start_s + d * DAY_S)
            hi = min(seg.end_s, start_s + (d + 1) * DAY_S)
            if hi > lo:
                out[d].append((seg, hi - lo))
    return out


def device_days(
    specs: list[DeviceSpec], timelines: list[list[Segment]], start_s: int, days: int
) -> list[DeviceDay]:
    """Truth per (day, device) over the eligible time; days it was not eligible are absent."""
    rows = []
    for spec, segs in zip(specs, timelines, strict=True):
        for d, parts in sorted(_split_by_day(segs, start_s, days).items()):
            up = sum(n for seg, n in parts if seg.up)
            down = sum(n for seg, n in parts if not seg.up)
            rows.append(DeviceDay(day_of(start_s, d), spec.device_id, up, down))
    rows.sort(key=lambda r: (r.day, r.device_id))
    return rows


def rollup(
    specs: list[DeviceSpec],
    timelines: list[list[Segment]],
    start_s: int,
    days: int,
    by: str,
) -> list[dict[str, object]]:
    """Time-weighted up/down per day and ``by`` (``fleet``, ``firmware`` or ``site``)."""
    acc: dict[tuple[date, str], list[int]] = defaultdict(lambda: [0, 0])
    for spec, segs in zip(specs, timelines, strict=True):
        for d, parts in _split_by_day(segs, start_s, days).items():
            for seg, n in parts:
                key = {"fleet": "fleet", "firmware": seg.firmware, "site": spec.site}[by]
                cell = acc[(day_of(start_s, d), key)]
                cell[0 if seg.up else 1] += n
    rows: list[dict[str, object]] = []
    for (day, key), (up, down) in sorted(acc.items()):
        row: dict[str, object] = {"day": day}
        if by != "fleet":
            row[by if by == "site" else "firmware_version"] = key
        row |= {"up_s": up, "down_s": down, "uptime": up / (up + down) if up + down else None}
        rows.append(row)
    return rows


def overall_by(
    specs: list[DeviceSpec], timelines: list[list[Segment]], by: str
) -> dict[str, float | None]:
    """Uptime over the whole run per firmware version or site (time-weighted)."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for spec, segs in zip(specs, timelines, strict=True):
        for seg in segs:
            key = seg.firmware if by == "firmware" else spec.site
            acc[key][0 if seg.up else 1] += seg.end_s - seg.start_s
    return {k: (u / (u + d) if u + d else None) for k, (u, d) in sorted(acc.items())}
