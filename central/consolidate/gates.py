"""Validation gates on the gold tables: a failure blocks publishing and names the rows.

Each gate returns ``reason -> boolean mask`` (one entry per row; False rejects the row), so
the run record lists how many rows failed which check, with a sample of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import Gate, gate

# Seconds are exact sums of milliseconds; this only absorbs float formatting of /1000.
TOLERANCE_S = 1e-6

UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "device_day": ("day", "device_id"),
    "device_day_all": ("day", "device_id"),
    "device_firmware_day": ("day", "device_id", "firmware_version"),
    "fleet_day": ("day",),
    "firmware_day": ("day", "firmware_version"),
    "site_day": ("day", "site"),
    "geo_day": ("day", "geohash5"),
    "agent_device_day": ("gateway_id", "day", "device_id"),
}


def _in_unit_range(col: pa.ChunkedArray) -> pa.ChunkedArray:
    # null is allowed (no denominator); NaN is not
    ok = pc.and_(pc.greater_equal(col, 0.0), pc.less_equal(col, 1.0))
    return pc.if_else(pc.is_null(col), True, pc.fill_null(ok, False))


def unique_mask(table: pa.Table, keys: Sequence[str]) -> list[bool]:
    """False for every row whose key occurs more than once (nulls compare equal)."""
    rows = list(zip(*(table[k].to_pylist() for k in keys), strict=True)) if keys else []
    counts = Counter(rows)
    return [counts[r] == 1 for r in rows]


@gate("device_day", name="kpi_in_range")
def kpi_in_range(device_day: pa.Table) -> dict[str, pa.ChunkedArray]:
    """Uptime and connectivity in [0, 1]; no negative seconds."""
    checks = {
        "device_uptime outside [0, 1]": _in_unit_range(device_day["device_uptime"]),
        "connectivity_ratio outside [0, 1]": _in_unit_range(device_day["connectivity_ratio"]),
    }
    for col in ("up_s", "down_s", "unknown_s", "eligible_s"):
        checks[f"{col} is negative"] = pc.fill_null(
            pc.greater_equal(device_day[col], -TOLERANCE_S), False
        )
    return checks


@gate("device_day", name="time_adds_up")
def time_adds_up(device_day: pa.Table) -> dict[str, pa.ChunkedArray]:
    """up_s + down_s + unknown_s = eligible_s, and eligible_s is at most one day."""
    total = pc.add(pc.add(device_day["up_s"], device_day["down_s"]), device_day["unknown_s"])
    diff = pc.abs(pc.subtract(total, device_day["eligible_s"]))
    return {
        "up_s + down_s + unknown_s != eligible_s": pc.fill_null(
            pc.less_equal(diff, TOLERANCE_S), False
        ),
        "eligible_s is over 86400": pc.fill_null(
            pc.less_equal(device_day["eligible_s"], 86400.0 + TOLERANCE_S), False
        ),
    }


@gate("fleet_day", name="fleet_uptime_in_range")
def fleet_uptime_in_range(fleet_day: pa.Table) -> dict[str, pa.ChunkedArray]:
    """Fleet uptime in [0, 1]."""
    return {"fleet_uptime outside [0, 1]": _in_unit_range(fleet_day["fleet_uptime"])}


def _unique_gate(node: str) -> Gate:
    keys = UNIQUE_KEYS[node]

    def check(value: pa.Table) -> dict[str, list[bool]]:
        return {f"duplicate key ({', '.join(keys)})": unique_mask(value, keys)}

    return Gate(f"unique_{node}", node, check)


@gate("reconciliation", name="ledger_reconciles")
def ledger_reconciles(reconciliation: pa.Table) -> dict[str, pa.ChunkedArray]:
    """Per batch: rows read = ledger rows = kept + duplicates + observations + KPI rows +
    quarantined."""
    r = reconciliation
    accounted = pc.add(
        pc.add(pc.add(r["kept_rows"], r["duplicate_rows"]), r["kpi_rows"]),
        pc.add(r["observation_rows"], r["quarantined_rows"]),
    )
    return {
        "rows read from the landing file differ from the ledger's row count": pc.equal(
            r["rows_read"], r["ledger_rows"]
        ),
        "rows read differ from kept + duplicate + observation + kpi + quarantined rows": (
            pc.equal(r["rows_read"], accounted)
        ),
    }


GATES: list[Gate | Callable[[Any], Any]] = [
    kpi_in_range,
    time_adds_up,
    fleet_uptime_in_range,
    ledger_reconciles,
    *(_unique_gate(n) for n in UNIQUE_KEYS if n != "device_day_all"),
]
