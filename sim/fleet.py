"""The virtual fleet: who the devices are, and their second-resolution up/down timelines.

Pure functions of (scenario, seed). Every device draws from its own RNG seeded with
``"<seed>:<device_id>:<purpose>"``, so a device's timeline does not change when another
device is added, and a run is reproducible bit for bit.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from .scenario import Firmware, Scenario, Site

# A reboot never takes less than this; exponential down times would otherwise allow 0 s.
MIN_DOWN_S = 20
# A device that was down when its update was due fetches it this long after it boots.
UPDATE_AFTER_BOOT_S = 60
# Devices present at the start were commissioned this many days before it (at most).
MAX_AGE_DAYS = 400

Cause = Literal["crash", "loop", "update"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Roam:
    """A stretch of time when the device publishes under another site."""

    site: str
    start_s: int
    end_s: int


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device: registry facts plus the scenario's special treatments."""

    index: int
    device_id: str
    site: str
    lat: float
    lon: float
    heartbeat_s: int
    commissioned_s: int  # registry value; may lie before the scenario start
    decommissioned_s: int | None
    firmware: str  # installed at the start (or at commissioning)
    firmware_installed_s: int
    update_to: str | None = None
    update_s: int | None = None  # when the rollout reaches the device
    install_s: int = 90
    loss_rate: float = 0.0
    roam: Roam | None = None
    skew_ms: int = 0
    rfc3339: bool = False
    utc_offset: str = "+00:00"

    def eligible(self, start_s: int, end_s: int) -> tuple[int, int]:
        """The part of [start_s, end_s) in which the device counts (registry dates)."""
        lo = max(start_s, self.commissioned_s)
        hi = end_s if self.decommissioned_s is None else min(end_s, self.decommissioned_s)
        return lo, max(lo, hi)


@dataclass(frozen=True, slots=True)
class Segment:
    """[start_s, end_s) in one state; a down segment says why (``cause``)."""

    start_s: int
    end_s: int
    up: bool
    firmware: str
    cause: Cause | None = None
    loop_start: bool = False  # first crash of a crash loop


def _rng(seed: int, device_id: str, purpose: str) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across processes.
    return random.Random(f"{seed}:{device_id}:{purpose}")


def site_counts(scenario: Scenario) -> list[int]:
    """Devices per site, scaled to ``scenario.devices`` by largest remainder."""
    base = [s.devices for s in scenario.sites]
    total = scenario.total_devices
    if sum(base) == total:
        return base
    weights = base if sum(base) > 0 else [1] * len(base)
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _scatter(site: Site, rng: random.Random) -> tuple[float, float]:
    # uniform in a disc of radius_km; 111.32 km per degree of latitude
    r = site.radius_km * math.sqrt(rng.random())
    a = rng.uniform(0, 2 * math.pi)
    dlat = r * math.sin(a) / 111.32
    dlon = r * math.cos(a) / (111.32 * max(0.01, math.cos(math.radians(site.lat))))
    return round(site.lat + dlat, 6), round(site.lon + dlon, 6)


def _weighted(rng: random.Random, items: list[tuple[T, float]]) -> T:
    total = sum(w for _, w in items)
    x = rng.random() * total
    for item, w in items:
        x -= w
        if x < 0:
            return item
    return items[-1][0]


def plan_fleet(scenario: Scenario) -> list[DeviceSpec]:
    """Every device of the scenario with its site, heartbeat, firmware and special roles."""
    seed, start, end = scenario.seed, scenario.start_s, scenario.end_s
    fleet_rng = random.Random(f"{seed}:fleet")
    sites = {s.name: s for s in scenario.sites}
    ids: list[tuple[str, Site]] = []
    for site, n in zip(scenario.sites, site_counts(scenario), strict=True):
        ids += [(f"{site.name}-{i + 1:04d}", site) for i in range(n)]
    n_total = len(ids)
    # special roles go to distinct random devices, drawn once for the whole fleet
    order = list(range(n_total))
    fleet_rng.shuffle(order)
    take = iter(order)
    lossy = {next(take) for _ in range(min(scenario.links.lossy_devices, n_total))}
    roamers = [next(take) for _ in range(min(scenario.roaming.devices, n_total - len(lossy)))]
    skewed = {
        next(take)
        for _ in range(min(scenario.clock.skewed_devices, n_total - len(lossy) - len(roamers)))
    }
    hb_mix = [(h.seconds, h.share) for h in scenario.heartbeats]
    fw_mix = [(f.version, f.share) for f in scenario.firmware if f.share > 0]
    specs = []
    for index, (device_id, site) in enumerate(ids):
        rng = _rng(seed, device_id, "spec")
        lat, lon = _scatter(site, rng)
        heartbeat = _weighted(rng, hb_mix)
        late = rng.random() < scenario.lifecycle.commissioned_late
        if late:
            commissioned = start + rng.randrange(3600, max(3601, end - start - 3600))
        else:
            commissioned = start - rng.randrange(86400, MAX_AGE_DAYS * 86400)
        decommissioned = None
        if rng.random() < scenario.lifecycle.decommissioned_early:
            lo = max(start, commissioned) + 3600
            if lo < end - 3600:
                decommissioned = rng.randrange(lo, end - 3600)
        firmware = _weighted(rng, fw_mix)
        installed = commissioned if late else commissioned + rng.randrange(0, start - commissioned)
        roam = None
        if index in roamers:
            others = [s for s in scenario.sites if s.name != site.name]
            if others:
                span = int(scenario.roaming.duration_h * 3600)
                r_start = start + rng.randrange(0, max(1, end - start - span))
                roam = Roam(rng.choice(others).name, r_start, min(end, r_start + span))
        specs.append(
            DeviceSpec(
                index=index,
                device_id=device_id,
                site=site.name,
                lat=lat,
                lon=lon,
                heartbeat_s=heartbeat,
                commissioned_s=commissioned,
                decommissioned_s=decommissioned,
                firmware=firmware,
                firmware_installed_s=installed,
                loss_rate=scenario.links.loss_rate if index in lossy else 0.0,
                roam=roam,
                skew_ms=int(scenario.clock.skew_s * 1000) if index in skewed else 0,
                rfc3339=rng.random() < scenario.messages.rfc3339_share,
                utc_offset=sites[site.name].utc_offset,
            )
        )
    return _assign_rollouts(scenario, specs, fleet_rng)


def _assign_rollouts(
    scenario: Scenario, specs: list[DeviceSpec], rng: random.Random
) -> list[DeviceSpec]:
    out = list(specs)
    for r in scenario.rollouts:
        at = scenario.start_s + int(r.start_h * 3600)
        span = int(r.duration_h * 3600)
        candidates = [
            i
            for i, d in enumerate(out)
            if (not r.sites or d.site in r.sites)
            and d.update_to is None
            and d.firmware != r.firmware
            and d.eligible(at, at + span + 1)[1] > d.eligible(at, at + span + 1)[0]
        ]
        chosen = rng.sample(candidates, round(len(candidates) * r.share))
        for i in sorted(chosen):
            d = out[i]
            lo, hi = d.eligible(at, at + span + 1)
            when = lo + rng.randrange(0, max(1, hi - lo))
            out[i] = replace(d, update_to=r.firmware, update_s=when, install_s=r.install_s)
    return out


def _shifted_exp(rng: random.Random, mean: float, minimum: float) -> int:
    """An exponential duration of the given mean that never goes below ``minimum``."""
    if mean <= minimum:
        return max(1, round(mean))
    return max(1, round(minimum + rng.expovariate(1.0 / (mean - minimum))))


def timeline(
    spec: DeviceSpec, firmware: dict[str, Firmware], start_s: int, end_s: int, seed: int
) -> list[Segment]:
    """Up and down segments covering the device's eligible part of [start_s, end_s)."""
    lo, hi = spec.eligible(start_s, end_s)
    if hi <= lo:
        return []
    rng = _rng(seed, spec.device_id, "timeline")
    segs: list[Segment] = []
    fw = spec.firmware
    update_at = spec.update_s
    loop_left = 0
    t = lo
    while t < hi:
        # every pass starts an up phase at t; an update due by now comes just after the boot
        if update_at is not None and update_at <= t:
            update_at = t + UPDATE_AFTER_BOOT_S
        model = firmware[fw]
        loop = model.crash_loop
        if loop_left > 0 and loop is not None:
            run = max(1, round(rng.expovariate(1.0 / loop.up_s)))
        else:
            run = max(1, round(rng.expovariate(1.0 / (model.mtbf_h * 3600))))
        if update_at is not None and spec.update_to is not None and t <= update_at < t + run:
            # the update arrives while up: announce, install (down), boot the new version
            segs.append(Segment(t, update_at, True, fw))
            fw, loop_left = spec.update_to, 0
            done = min(hi, update_at + spec.install_s)
            segs.append(Segment(update_at, done, False, fw, "update"))
            t, update_at = done, None
            continue
        if t + run >= hi:
            segs.append(Segment(t, hi, True, fw))
            break
        segs.append(Segment(t, t + run, True, fw))
        t += run
        cause: Cause
        starts_loop = False
        if loop_left > 0 and loop is not None:
            loop_left -= 1
            cause, down = "loop", _shifted_exp(rng, loop.down_s, MIN_DOWN_S)
        elif loop is not None and rng.random() < loop.probability:
            # this failure plus a geometric number of further crashes, mean `crashes` in all
            loop_left = _geometric(rng, loop.crashes) - 1
            cause, down, starts_loop = "loop", _shifted_exp(rng, loop.down_s, MIN_DOWN_S), True
        else:
            cause, down = "crash", _shifted_exp(rng, model.mttr_s, MIN_DOWN_S)
        end = min(hi, t + down)
        segs.append(Segment(t, end, False, fw, cause, starts_loop))
        t = end
    return segs


def _geometric(rng: random.Random, mean: float) -> int:
    """A count >= 1 with the given mean (geometric on 1, 2, ...)."""
    if mean <= 1:
        return 1
    p = 1.0 / mean
    return 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p))
