"""The report on the simulator's firmware-regression scenario names what the truth says:
the faulty firmware, each day's fleet uptime, the worst site."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from central.report import build_report
from central.report.summary import pct
from sim import prepare
from tests.report_support import gold_from_sim, text_of, write_gold


def test_report_names_the_faulty_firmware_of_the_scenario(tmp_path: Path) -> None:
    prepare("firmware-regression", tmp_path / "sim", devices=60, days=3, seed=7)
    write_gold(tmp_path / "gold", gold_from_sim(tmp_path / "sim"))
    text = text_of(build_report(tmp_path / "gold", tmp_path / "runs"))
    truth = json.loads((tmp_path / "sim" / "truth" / "scenario.json").read_text())["truth"]
    faulty = json.loads((tmp_path / "sim" / "truth" / "scenario.json").read_text())[
        "faulty_firmware"
    ]
    assert f"Worst firmware: {faulty} at {pct(truth['uptime_by_firmware'][faulty])}" in text
    assert f"Firmware {faulty}: " in text and "Halt its rollout" in text
    for day, uptime in truth["fleet_uptime_by_day"].items():
        assert f"{date.fromisoformat(day):%b %d, %Y} {pct(uptime)}" in text
    by_site = truth["uptime_by_site"]
    worst = min(by_site, key=by_site.__getitem__)
    assert f"Worst sites: {worst} {pct(by_site[worst])}" in text
