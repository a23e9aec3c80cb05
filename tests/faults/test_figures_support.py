"""The RELIABILITY.md writer: every scenario gets a row, verdicts follow outcomes, rows survive."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.faults.figures_support import SCENARIOS, Row, full_scale, output_path, render

WHEN = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def test_every_scenario_has_a_row_and_verdicts_follow_outcomes() -> None:
    rows = {
        "R2": Row("R2", "0 of 9 lost | x", ["passed", "passed"]),
        "R1": Row("R1", "5 kills", ["passed", "skipped: upload not landed"]),
        "R3": Row("R3", "1 lost", ["failed"]),
        "S1": Row("S1", "", ["skipped: make test runs it"]),
    }
    text = render(rows, WHEN, "full")
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [ln.split("|")[1].strip() for ln in lines] == list(SCENARIOS)
    by = {ln.split("|")[1].strip(): ln for ln in lines}
    assert "0 of 9 lost \\| x" in by["R2"] and "| pass |" in by["R2"]
    assert "| pass (partial) |" in by["R1"]
    assert "| FAIL |" in by["R3"]
    assert "make test runs it" in by["S1"] and "| not run |" in by["S1"]
    assert "| not run |" in by["R7"] and "2026-11-26" in by["R7"]


def test_rows_not_rerun_keep_their_earlier_line() -> None:
    first = render({"R2": Row("R2", "250 cuts", ["passed"])}, WHEN, "full")
    later = WHEN + dt.timedelta(days=3)
    second = render({"R6": Row("R6", "50 lost answers", ["passed"])}, later, "full", first)
    assert "250 cuts" in second and "2026-11-26" in second
    assert "50 lost answers" in second and "2026-11-29" in second


def test_scale_knob_and_output() -> None:
    assert full_scale({"FLEETPULSE_FAULTS": "full"})
    assert not full_scale({})
    with pytest.raises(ValueError, match="FLEETPULSE_FAULTS"):
        full_scale({"FLEETPULSE_FAULTS": "ful"})
    assert output_path({}) is None  # the reduced CI run never rewrites RELIABILITY.md
    assert output_path({"FLEETPULSE_FAULTS": "full"}).name == "RELIABILITY.md"  # type: ignore[union-attr]
    assert str(output_path({"FLEETPULSE_RELIABILITY_OUT": "/x/r.md"})) == "/x/r.md"
