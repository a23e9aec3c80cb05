"""A small reference of DESIGN §4's up-time rule, used to check the simulator is faithful.

Tests feed it the messages the simulator published (decoded with ``schemas.decode``) and
compare its device-day uptime with the simulator's truth; it assumes every eligible second
is observed (one subscriber that hears everything), so down = eligible - up.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from schemas import Reading

DAY_MS = 86_400_000


def up_intervals(readings: Iterable[Reading], heartbeat_s: float, gap_k: float = 2.5):
    """[t1, t2) up-intervals in ms of one device's readings (any order, duplicates allowed)."""
    seen = {}
    for r in readings:
        seen[r.key] = r
    ordered = sorted(seen.values(), key=lambda r: (r.ts_ms, r.kind != "status", r.seq))
    h_ms, g_ms = heartbeat_s * 1000, gap_k * heartbeat_s * 1000
    out = []
    for i, r in enumerate(ordered):
        if r.kind == "status" and r.state == "offline":
            continue
        t1 = r.ts_ms
        if i + 1 < len(ordered):
            t2 = ordered[i + 1].ts_ms
            end = t2 if t2 - t1 <= g_ms else t1 + h_ms / 2
            # an offline status ends up-time at its own time
            end = min(end, t2) if ordered[i + 1].state == "offline" else end
        else:
            end = t1 + h_ms / 2
        if end > t1:
            out.append((t1, end))
    return out


def device_day_up_ms(
    readings: Iterable[Reading],
    heartbeats: dict[str, float],
    eligible: dict[str, tuple[int, int]],
) -> dict[tuple[int, str], float]:
    """(day start ms, device_id) → up ms inside the device's eligible window."""
    by_dev: dict[str, list[Reading]] = defaultdict(list)
    for r in readings:
        by_dev[r.device_id].append(r)
    out: dict[tuple[int, str], float] = defaultdict(float)
    for dev, rs in by_dev.items():
        lo, hi = eligible[dev]
        for a, b in up_intervals(rs, heartbeats[dev]):
            a, b = max(a, lo), min(b, hi)
            while a < b:
                day = a - a % DAY_MS
                cut = min(b, day + DAY_MS)
                out[(day, dev)] += cut - a
                a = cut
    return out
