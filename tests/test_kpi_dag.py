"""The KPI computation as a pipeline step behind the KPI gate (ratios, parts = eligible)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pyarrow as pa
import pytest

from agent.kpi import compute_kpis, kpi_checks
from pipeline import Gate, GateFailed, Pipeline, step
from schemas import Device
from tests.kpi_cases import load_cases

CASE = next(c for c in load_cases() if c.name == "not_observing")


def kpis(batch: pa.Table, registry: list[Device], days: list[date]) -> pa.Table:
    """Per device-day KPI rows."""
    return compute_kpis(batch, registry, days)


def published(kpis: pa.Table, sink: list[Any]) -> int:
    """Stand-in for the step after the gate (export); records that it ran."""
    sink.append(kpis.num_rows)
    return kpis.num_rows


GATE = Gate("kpi_sane", "kpis", kpi_checks)


def test_good_rows_pass_the_gate_and_flow_downstream() -> None:
    sink: list[Any] = []
    res = Pipeline([kpis, step(published, cache=False)], gates=[GATE]).run(
        {"batch": CASE.batch, "registry": CASE.registry, "days": CASE.days, "sink": sink}
    )
    assert res.ok and sink == [2]
    assert res.record.gates[0]["passed"] and res.record.gates[0]["checked_rows"] == 2


def test_a_bad_row_stops_downstream_and_names_row_and_reason() -> None:
    def broken(kpis: pa.Table) -> pa.Table:
        """Corrupts d1's uptime."""
        rows = kpis.to_pylist()
        rows[0]["device_uptime"] = 1.5
        rows[0]["unknown_s"] += 1.0
        return pa.Table.from_pylist(rows, schema=kpis.schema)

    sink: list[Any] = []
    p = Pipeline(
        [
            kpis,
            step(broken, name="checked"),
            step(published, inputs={"kpis": "checked"}, cache=False),
        ],
        gates=[Gate("kpi_sane", "checked", kpi_checks)],
    )
    with pytest.raises(GateFailed) as err:
        p.run({"batch": CASE.batch, "registry": CASE.registry, "days": CASE.days, "sink": sink})
    assert sink == []
    (res,) = err.value.results
    assert res.failed_rows == 1
    assert set(res.reasons) == {
        "device_uptime outside [0, 1]",
        "up_s + down_s + unknown_s != eligible_s",
    }
    assert {f.row for f in res.failures} == {0}
    assert res.failures[0].values is not None and res.failures[0].values["device_id"] == "d1"
    assert err.value.record is not None
    assert err.value.record.step("published").status == "blocked"
    assert "device_uptime outside [0, 1] (1 rows)" in str(err.value)
