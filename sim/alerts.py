"""Alert and firmware-install records derived from the timelines (pure; written by outputs.py).

Alerts correlate with downtime the way a monitoring system's would: a watchdog alert spans
each crash loop, an unreachable alert each long outage, some reboots raise a warning; on top
comes unrelated noise (temperature, battery, storage, signal — more signal alerts on lossy
links) so the report has something to tell apart.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .fleet import DeviceSpec, Segment
from .scenario import Scenario

# Monitoring notices an unreachable device after this long, and only for outages this long.
UNREACHABLE_AFTER_S = 600
REBOOT_ALERT_SHARE = 0.3
OPEN_NOISE_SHARE = 0.1
NOISE_TYPES = (
    ("high_temperature", "warning"),
    ("low_battery", "minor"),
    ("storage_low", "minor"),
    ("low_signal", "minor"),
)


def _alert(
    device_id: str, k: int, severity: str, atype: str, raised: int, cleared: int | None, end: int
) -> dict[str, Any]:
    # epoch ms; an alert not cleared by the end of the run is still open
    return {
        "alert_id": f"{device_id}-a{k:05d}",
        "device_id": device_id,
        "severity": severity,
        "type": atype,
        "raised_at": raised * 1000,
        "cleared_at": None if cleared is None or cleared >= end else cleared * 1000,
    }


def device_alerts(
    spec: DeviceSpec, segments: list[Segment], scenario: Scenario
) -> list[dict[str, Any]]:
    """The alerts of one device over the run."""
    rng = random.Random(f"{scenario.seed}:{spec.device_id}:alerts")
    end = scenario.end_s
    out: list[dict[str, Any]] = []

    def add(severity: str, atype: str, raised: int, cleared: int | None) -> None:
        if raised < end:
            out.append(_alert(spec.device_id, len(out) + 1, severity, atype, raised, cleared, end))

    i = 0
    while i < len(segments):
        seg = segments[i]
        if seg.up:
            i += 1
            continue
        if seg.loop_start:
            j = i
            # the loop lasts until a down segment that is not a loop crash
            while (
                j + 2 < len(segments)
                and segments[j + 2].cause == "loop"
                and not segments[j + 2].loop_start
            ):
                j += 2
            raised = seg.start_s + rng.randint(5, 60)
            cleared = segments[j].end_s + rng.randint(60, 600)
            add("major", "watchdog_reset", raised, cleared)
            i = j + 1
            continue
        if seg.end_s - seg.start_s > UNREACHABLE_AFTER_S:
            add("critical", "device_unreachable", seg.start_s + UNREACHABLE_AFTER_S, seg.end_s + 60)
        elif seg.cause == "crash" and rng.random() < REBOOT_ALERT_SHARE:
            add("warning", "unexpected_reboot", seg.end_s, seg.end_s + 600)
        i += 1
    lo, hi = spec.eligible(scenario.start_s, end)
    rate = scenario.alerts.noise_per_device_day * (hi - lo) / 86400
    for _ in range(_poisson(rng, rate)):
        atype, severity = rng.choice(NOISE_TYPES)
        raised = rng.randrange(lo, max(lo + 1, hi))
        closed = (
            None if rng.random() < OPEN_NOISE_SHARE else raised + int(rng.expovariate(1 / 3600))
        )
        add(severity, atype, raised, closed)
    if spec.loss_rate:
        # flaky radio: signal alerts come often on lossy links
        for _ in range(_poisson(rng, 4 * (hi - lo) / 86400)):
            raised = rng.randrange(lo, max(lo + 1, hi))
            add("minor", "low_signal", raised, raised + int(rng.expovariate(1 / 1800)))
    return out


def fleet_alerts(
    specs: list[DeviceSpec], timelines: list[list[Segment]], scenario: Scenario
) -> list[dict[str, Any]]:
    """Every alert of the fleet, ordered by raise time then id."""
    rows = [
        a
        for spec, segs in zip(specs, timelines, strict=True)
        for a in device_alerts(spec, segs, scenario)
    ]
    rows.sort(key=lambda a: (a["raised_at"], a["alert_id"]))
    return rows


def firmware_installs(
    specs: list[DeviceSpec], timelines: list[list[Segment]]
) -> list[dict[str, Any]]:
    """Firmware history: the version each device started with, then every update it installed."""
    rows = []
    for spec, segs in zip(specs, timelines, strict=True):
        rows.append(
            {
                "device_id": spec.device_id,
                "firmware_version": spec.firmware,
                "installed_at": spec.firmware_installed_s * 1000,
            }
        )
        for seg in segs:
            if seg.cause == "update":
                rows.append(
                    {
                        "device_id": spec.device_id,
                        "firmware_version": seg.firmware,
                        "installed_at": seg.start_s * 1000,
                    }
                )
    rows.sort(key=lambda r: (r["installed_at"], r["device_id"]))
    return rows


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: fine for the small rates used here
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
