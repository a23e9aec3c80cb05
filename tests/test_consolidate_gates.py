"""Validation gates on gold: what each rejects, with the failing rows named."""

from __future__ import annotations

from datetime import date

import pyarrow as pa

from central.consolidate.gates import GATES
from pipeline import evaluate
from pipeline.gates import as_gate

D = date(2026, 1, 1)


def _gate(name: str):  # type: ignore[no-untyped-def]
    return next(g for g in map(as_gate, GATES) if g.name == name)


def _device_day(**over: list[object]) -> pa.Table:
    cols: dict[str, list[object]] = {
        "day": [D, D],
        "device_id": ["a", "b"],
        "eligible_s": [86400.0, 600.0],
        "up_s": [86000.0, 600.0],
        "down_s": [400.0, 0.0],
        "unknown_s": [0.0, 0.0],
        "device_uptime": [86000 / 86400, 1.0],
        "connectivity_ratio": [1.0, None],
    }
    cols.update(over)
    return pa.table(cols)


def test_good_rows_pass_every_device_day_gate() -> None:
    t = _device_day()
    for name in ("kpi_in_range", "time_adds_up", "unique_device_day"):
        assert evaluate(_gate(name), t).passed, name


def test_uptime_out_of_range_is_named() -> None:
    res = evaluate(_gate("kpi_in_range"), _device_day(device_uptime=[1.2, 1.0]))
    assert not res.passed and res.failed_rows == 1
    assert res.failures[0].values["device_id"] == "a"
    assert "device_uptime outside [0, 1]" in res.summary()


def test_nan_uptime_fails_but_null_passes() -> None:
    res = evaluate(_gate("kpi_in_range"), _device_day(device_uptime=[float("nan"), None]))
    assert res.failed_rows == 1 and res.failures[0].row == 0


def test_times_that_do_not_add_up_are_named() -> None:
    res = evaluate(_gate("time_adds_up"), _device_day(unknown_s=[0.0, 5.0]))
    assert not res.passed and res.failures[0].values["device_id"] == "b"
    assert "up_s + down_s + unknown_s != eligible_s" in res.reasons


def test_duplicate_keys_are_named() -> None:
    res = evaluate(_gate("unique_device_day"), _device_day(device_id=["a", "a"]))
    assert res.failed_rows == 2


def test_reconciliation_gate() -> None:
    r = pa.table(
        {
            "batch_id": ["b1", "b2", "b3", "b4"],
            "ledger_rows": [10, 10, 10, 10],
            "rows_read": [10, 9, 10, 10],
            "kept_rows": [7, 6, 5, 7],
            "duplicate_rows": [1, 1, 1, 1],
            "observation_rows": [1, 1, 1, 1],
            # b3: two agent KPI rows account for the rest; b4: one too many
            "kpi_rows": [0, 0, 2, 1],
            "quarantined_rows": [1, 1, 1, 1],
        }
    )
    res = evaluate(_gate("ledger_reconciles"), r)
    assert res.failed_rows == 2
    assert [f.values["batch_id"] for f in res.failures] == ["b2", "b4"]
