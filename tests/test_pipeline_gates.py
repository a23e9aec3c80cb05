"""Validation gates: which rows failed and why; downstream of a failed gate does not run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline import Event, Gate, GateFailed, Pipeline, RowFailure, evaluate, gate

ROWS = [
    {"device_id": "a", "uptime": 0.5},
    {"device_id": "b", "uptime": 1.5},
    {"device_id": "c", "uptime": None},
    {"device_id": "d", "uptime": -1.0},
]


def test_mask_kinds_record_failed_rows_with_values() -> None:
    t = pa.Table.from_pylist(ROWS)
    arrow = Gate("range", "t", lambda v: pc.less_equal(v["uptime"], 1.0), reason="uptime > 1")
    res = evaluate(arrow, t)
    # null is not a pass
    assert not res.passed and res.failed_rows == 2 and res.checked_rows == 4
    assert [(f.row, f.values["device_id"]) for f in res.failures] == [(1, "b"), (2, "c")]  # type: ignore[index]
    assert res.reasons == {"uptime > 1": 2}

    multi = Gate(
        "multi",
        "t",
        lambda v: {
            "above 1": pc.fill_null(pc.less_equal(v["uptime"], 1.0), True),
            "below 0": pc.fill_null(pc.greater_equal(v["uptime"], 0.0), True),
        },
    )
    res = evaluate(multi, t)
    assert res.reasons == {"above 1": 1, "below 0": 1} and res.failed_rows == 2

    np_gate = Gate("np", "t", lambda v: np.array([True, False, True, True]), reason="np")
    assert evaluate(np_gate, t).failed_rows == 1

    listy = Gate("list", "rows", lambda rows: [r["uptime"] is not None for r in rows])
    res = evaluate(listy, ROWS)
    assert res.failed_rows == 1 and res.failures[0].values == ROWS[2]


def test_whole_value_and_row_failure_results_and_raising_checks() -> None:
    assert evaluate(Gate("n", "t", lambda v: len(v) > 0), ROWS).passed
    res = evaluate(Gate("n", "t", lambda v: len(v) > 10, reason="too few rows"), ROWS)
    assert not res.passed and res.failures[0].reason == "too few rows"

    def explain(rows: list[dict[str, Any]]) -> list[RowFailure]:
        return [
            RowFailure(i, f"uptime {r['uptime']} for {r['device_id']}")
            for i, r in enumerate(rows)
            if r["uptime"] is not None and r["uptime"] > 1
        ]

    res = evaluate(Gate("x", "rows", explain), ROWS)
    assert res.failed_rows == 1 and res.failures[0].values == ROWS[1]
    assert res.failures[0].reason == "uptime 1.5 for b"

    res = evaluate(Gate("boom", "t", lambda v: v["missing"]), pa.Table.from_pylist(ROWS))
    assert not res.passed and res.error is not None and "KeyError" in res.error

    res = evaluate(Gate("len", "t", lambda v: [True]), ROWS)
    assert not res.passed and "one boolean per row" in str(res.error)


def test_failed_gate_blocks_only_downstream_and_is_recorded() -> None:
    def rows(n: int) -> list[dict[str, Any]]:
        return ROWS[:n]

    def report(rows: list[dict[str, Any]]) -> str:
        return "published"

    def counts(n: int) -> int:
        return n

    @gate("rows", reason="uptime missing or out of [0, 1]")
    def sane(rows: list[dict[str, Any]]) -> list[bool]:
        return [r["uptime"] is not None and 0 <= r["uptime"] <= 1 for r in rows]

    events: list[Event] = []
    p = Pipeline([rows, report, counts], gates=[sane])
    assert p.run({"n": 1}).ok
    with pytest.raises(GateFailed) as err:
        p.run({"n": 4}, subscribers=[events.append])
    rec = err.value.record
    assert rec is not None
    assert rec.step("report").status == "blocked" and rec.step("report").blocked_by == "gate sane"
    assert rec.step("counts").status == "ok"
    assert rec.gates[0]["failed_rows"] == 3 and not rec.gates[0]["passed"]
    assert [e.kind for e in events if e.kind == "gate_failed"] == ["gate_failed"]
    assert "rejected 3 rows" in str(err.value) and "row 1" in str(err.value)
    res = p.run({"n": 4}, raise_on_failure=False)
    assert "report" not in res.outputs and res.outputs["counts"] == 4


def test_gate_on_an_external_input_blocks_its_consumers() -> None:
    def used(raw: list[int]) -> int:
        return sum(raw)

    g = Gate("positive", "raw", lambda v: [x > 0 for x in v], reason="not positive")
    res = Pipeline([used], gates=[g]).run({"raw": [1, -2]}, raise_on_failure=False)
    assert not res.ok and res.record.step("used").status == "blocked"
