"""The pipeline's gold tables against the simulator's ground truth (DESIGN §4, issue 6 bars).

Pure functions on Arrow tables plus one reader; both the demo and the end-to-end test use
them, so the figures the demo prints are the figures the test asserts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# The bars of issue 6, in percentage points.
DEVICE_DAY_MAE_MAX_PTS = 0.5
FLEET_DAY_MAX_PTS = 0.3


@dataclass(frozen=True)
class Accuracy:
    """How far gold is from truth; errors in percentage points (1.0 = one point)."""

    device_days: int  # truth device-days with a known uptime
    matched: int  # of those, present in gold with a non-null uptime
    missing: list[tuple[date, str]]  # truth device-days gold has no uptime for
    device_day_mae_pts: float | None
    device_day_max_pts: float | None
    worst_device_day: tuple[date, str] | None
    fleet_day_error_pts: dict[date, float | None]
    faulty_firmware: str | None
    firmware_uptime: dict[str, float]  # gold, time-weighted over all days
    lowest_firmware: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fleet_day_max_pts(self) -> float | None:
        errs = [abs(e) for e in self.fleet_day_error_pts.values() if e is not None]
        return max(errs) if errs else None

    @property
    def faulty_is_lowest(self) -> bool:
        return self.faulty_firmware is not None and self.lowest_firmware == self.faulty_firmware

    @property
    def passed(self) -> bool:
        """The three bars of issue 6 (and no truth device-day left without a figure)."""
        mae, worst_fleet = self.device_day_mae_pts, self.fleet_day_max_pts
        fleet_ok = all(e is not None for e in self.fleet_day_error_pts.values())
        return (
            not self.missing
            and mae is not None
            and mae <= DEVICE_DAY_MAE_MAX_PTS
            and fleet_ok
            and worst_fleet is not None
            and worst_fleet <= FLEET_DAY_MAX_PTS
            and self.faulty_is_lowest
        )


def _ratio(up: float, down: float) -> float | None:
    return up / (up + down) if up + down > 0 else None


def _by_day(rows: list[dict[str, Any]]) -> dict[date, tuple[float, float]]:
    out: dict[date, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        acc = out[r["day"]]
        acc[0] += float(r["up_s"] or 0)
        acc[1] += float(r["down_s"] or 0)
    return {d: (u, dn) for d, (u, dn) in out.items()}


def firmware_uptime(firmware_day: pa.Table) -> dict[str, float]:
    """Σup / Σ(up+down) per firmware version over every day (null version left out)."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    cols = firmware_day.select(["firmware_version", "up_s", "down_s"]).to_pylist()
    for r in cols:
        if r["firmware_version"] is None:
            continue
        a = acc[r["firmware_version"]]
        a[0] += float(r["up_s"] or 0)
        a[1] += float(r["down_s"] or 0)
    out = {}
    for version, (up, down) in acc.items():
        u = _ratio(up, down)
        if u is not None:
            out[version] = u
    return out


def compare(
    gold_device_day: pa.Table,
    truth_device_day: pa.Table,
    gold_firmware_day: pa.Table,
    faulty_firmware: str | None,
) -> Accuracy:
    """Device-day and fleet-day errors, and which firmware gold finds lowest."""
    gold = {
        (r["day"], r["device_id"]): r
        for r in gold_device_day.select(["day", "device_id", "up_s", "down_s"]).to_pylist()
    }
    truth_rows = truth_device_day.select(["day", "device_id", "up_s", "down_s"]).to_pylist()
    errors: list[tuple[float, tuple[date, str]]] = []
    missing: list[tuple[date, str]] = []
    counted = 0
    for t in truth_rows:
        tu = _ratio(float(t["up_s"]), float(t["down_s"]))
        if tu is None:
            continue
        counted += 1
        key = (t["day"], t["device_id"])
        g = gold.get(key)
        gu = None if g is None else _ratio(float(g["up_s"] or 0), float(g["down_s"] or 0))
        if gu is None:
            missing.append(key)
            continue
        errors.append((abs(gu - tu) * 100, key))
    truth_days = _by_day(truth_rows)
    gold_days = _by_day(list(gold.values()))
    fleet: dict[date, float | None] = {}
    for day, (up, down) in sorted(truth_days.items()):
        tu = _ratio(up, down)
        gu = _ratio(*gold_days[day]) if day in gold_days else None
        fleet[day] = None if tu is None or gu is None else (gu - tu) * 100
    fw = firmware_uptime(gold_firmware_day)
    worst = max(errors) if errors else None
    return Accuracy(
        device_days=counted,
        matched=len(errors),
        missing=missing,
        device_day_mae_pts=sum(e for e, _ in errors) / len(errors) if errors else None,
        device_day_max_pts=worst[0] if worst else None,
        worst_device_day=worst[1] if worst else None,
        fleet_day_error_pts=fleet,
        faulty_firmware=faulty_firmware,
        firmware_uptime=fw,
        lowest_firmware=min(fw, key=lambda v: (fw[v], v)) if fw else None,
    )


def read_delta(path: Path) -> pa.Table:
    """A gold Delta table as Arrow."""
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def measure(gold_dir: Path, sim_dir: Path) -> Accuracy:
    """Read gold ``device_day``/``firmware_day`` and the simulator's truth; compare them."""
    scenario = json.loads((sim_dir / "truth" / "scenario.json").read_text(encoding="utf-8"))
    return compare(
        read_delta(gold_dir / "device_day"),
        pq.read_table(sim_dir / "truth" / "device_day.parquet"),
        read_delta(gold_dir / "firmware_day"),
        scenario.get("faulty_firmware"),
    )


def describe(a: Accuracy) -> list[str]:
    """The accuracy as short lines for the demo's summary."""

    def pts(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f} pts"

    lines = [
        f"device-day uptime: mean abs error {pts(a.device_day_mae_pts)} over {a.matched:,} "
        f"device-days (bar {DEVICE_DAY_MAE_MAX_PTS} pts); largest {pts(a.device_day_max_pts)}"
        + (f" ({a.worst_device_day[1]} on {a.worst_device_day[0]})" if a.worst_device_day else ""),
        f"fleet-day uptime: worst error {pts(a.fleet_day_max_pts)} (bar {FLEET_DAY_MAX_PTS} pts): "
        + ", ".join(
            f"{d} {'n/a' if e is None else f'{e:+.3f}'}" for d, e in a.fleet_day_error_pts.items()
        ),
    ]
    if a.missing:
        lines.append(f"{len(a.missing):,} truth device-day(s) have no uptime in gold")
    order = sorted(a.firmware_uptime.items(), key=lambda kv: kv[1])
    ranked = ", ".join(f"{v} {u * 100:.2f}%" for v, u in order)
    verdict = "yes" if a.faulty_is_lowest else "NO"
    lines.append(
        f"faulty firmware {a.faulty_firmware} lowest in firmware_day: {verdict} ({ranked})"
    )
    lines.append("accuracy: " + ("PASS" if a.passed else "FAIL") + " against the issue's bars")
    return lines
