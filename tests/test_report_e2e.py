"""The report on gold that consolidation really published: landed batches → ``consolidate``
→ ``fleetpulse central report``; figures checked against the Delta tables, lineage against
the run consolidation recorded."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from deltalake import DeltaTable

from central.config import load_config
from central.consolidate.runner import consolidate
from central.report.summary import MIN_FIRMWARE_SHARE, pct, pct_vs
from tests.central_support import cli
from tests.consolidate_support import land, make_fleet, split_batches, write_config, write_sources
from tests.report_support import text_of


def test_report_on_consolidated_gold(tmp_path: Path) -> None:
    fleet = make_fleet(n_devices=24, hours=54, n_gateways=3, seed=11)
    data = tmp_path / "data"
    data.mkdir()
    config = write_config(tmp_path, data, write_sources(tmp_path / "src", fleet))
    land(data, split_batches(fleet))
    outcome = consolidate(load_config(config, {}))
    assert outcome.status == "ok"

    out = tmp_path / "report.html"
    done = cli("central", "report", "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    text = text_of(html)
    assert html.count("<svg") == 7
    assert "http://" not in html and "https://" not in html

    fleet_day = DeltaTable(str(data / "gold" / "fleet_day")).to_pyarrow_table().to_pylist()
    target = fleet_day[0]["uptime_target"]
    for row in fleet_day:
        assert f"{row['day']:%b %d, %Y} {pct_vs(row['fleet_uptime'], target)}" in text

    # the worst firmware, summed here from firmware_day the way DESIGN §4 says
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in DeltaTable(str(data / "gold" / "firmware_day")).to_pyarrow_table().to_pylist():
        s = sums[r["firmware_version"] or "unknown"]
        s[0] += r["up_s"]
        s[1] += r["down_s"]
    known = sum(u + d for u, d in sums.values())
    judged = {v: u / (u + d) for v, (u, d) in sums.items() if u + d >= MIN_FIRMWARE_SHARE * known}
    worst = min(judged, key=judged.__getitem__)
    assert f"Worst firmware: {worst} at {pct(judged[worst])}" in text

    # lineage: the run consolidation wrote, its batches, steps, gates and published tables
    record = json.loads((data / "runs" / f"{outcome.run_id}.json").read_text())
    assert f"The tables come from run {outcome.run_id} of consolidate : ok" in text
    for b in record["inputs"]["new_batches"]:
        assert b["batch_id"] in text
    for step in record["pipeline"]["steps"]:
        assert f"<td>{step['name']}</td>" in html
    for gate in record["pipeline"]["gates"]:
        assert gate["passed"] and f"<td>{gate['gate']}</td>" in html
    for p in record["published"]:
        assert f"{p['table']} {p['version']} {p['rows']} whole table" in text
