"""The golden KPI cases themselves: they load, and their hand-worked figures are consistent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.batch import BATCH_SCHEMA
from tests.kpi_cases import KPI_COLUMNS, KpiCase, load_cases

CASES = load_cases()
REQUIRED = {
    "steady",
    "one_outage",
    "lwt_offline",
    "flapping_link",
    "commissioned_midday",
    "outage_across_midnight",
    "duplicate_readings",
    "out_of_order",
    "skewed_clock",
    "not_observing",
    "heartbeat_10s",
    "heartbeat_60s",
    "empty_day",
}


def test_every_required_case_exists() -> None:
    assert {c.name for c in CASES} >= REQUIRED


def _eligible_s(case: KpiCase, device_id: str, day: datetime) -> float:
    start, end = day, day + timedelta(days=1)
    dev = next((d for d in case.registry if d.device_id == device_id), None)
    if dev is not None and dev.commissioned_at is not None:
        start = max(start, dev.commissioned_at)
    if dev is not None and dev.decommissioned_at is not None:
        end = min(end, dev.decommissioned_at)
    return max(0.0, (end - start).total_seconds())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_is_well_formed_and_self_consistent(case: KpiCase) -> None:
    assert case.description and len(case.description.splitlines()) == 1
    assert case.days and case.expected
    assert case.batch.schema.equals(BATCH_SCHEMA)
    for row in case.expected:
        assert row["day"] in case.days
        day = datetime(row["day"].year, row["day"].month, row["day"].day, tzinfo=UTC)
        # the three parts add up to the eligible time computed from the registry alone
        total = row["up_s"] + row["down_s"] + row["unknown_s"]
        assert total == pytest.approx(_eligible_s(case, row["device_id"], day), abs=1e-6)
        assert min(row["up_s"], row["down_s"], row["unknown_s"]) >= 0
        denom = row["up_s"] + row["down_s"]
        if denom == 0:
            assert row["device_uptime"] is None
        else:
            assert row["device_uptime"] == pytest.approx(row["up_s"] / denom, abs=1e-6)
        for col in ("device_uptime", "connectivity_ratio"):
            assert row[col] is None or 0 <= row[col] <= 1
    keys = [(r["day"], r["device_id"]) for r in case.expected]
    assert len(keys) == len(set(keys)), "one expected row per (day, device)"
    assert set(KPI_COLUMNS) <= set(case.expected[0])
