"""Files a run writes: registry, Avro (fastavro and the reference avro package), truth, summary."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import avro.datafile
import avro.io
import fastavro
import pyarrow.parquet as pq
import pytest

from schemas import Device
from schemas.avro import ALERTS_AVSC, FIRMWARE_AVSC, load_avsc
from sim import Plan, prepare
from sim.fleet import plan_fleet


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return prepare("firmware-regression", tmp_path_factory.mktemp("sim"), devices=40, days=3)


def test_registry_rows_are_registry_devices(plan: Plan) -> None:
    with open(plan.out_dir / "registry.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == [
            "device_id",
            "site",
            "lat",
            "lon",
            "heartbeat_s",
            "gap_k",
            "commissioned_at",
            "decommissioned_at",
        ]
        devices = [Device(**{k: (v or None) for k, v in row.items()}) for row in reader]
    assert len(devices) == 40 == len({d.device_id for d in devices})
    assert {d.heartbeat_s for d in devices} <= {10.0, 30.0, 60.0}
    assert Counter(d.heartbeat_s for d in devices).most_common(1)[0][0] == 30.0
    assert {d.site for d in devices} == set(plan.sites)
    start = plan.scenario.start
    special = plan.summary["special_devices"]
    late = {d.device_id for d in devices if d.commissioned_at and d.commissioned_at > start}
    assert late == set(special["commissioned_late"])
    gone = {d.device_id for d in devices if d.decommissioned_at is not None}
    assert gone == set(special["decommissioned_early"])
    # the scenario does commission and decommission some devices mid-run
    big = plan_fleet(plan.scenario.with_overrides(devices=300))
    assert any(d.commissioned_s > plan.scenario.start_s for d in big)
    assert any(d.decommissioned_s is not None for d in big)


def _read_reference_avro(path: Path) -> list[dict]:
    with open(path, "rb") as fh:
        reader = avro.datafile.DataFileReader(fh, avro.io.DatumReader())
        rows = list(reader)
        reader.close()
    return rows


@pytest.mark.parametrize(
    ("name", "avsc"), [("firmware_versions.avro", FIRMWARE_AVSC), ("alerts.avro", ALERTS_AVSC)]
)
def test_avro_reads_back_with_both_libraries(plan: Plan, name: str, avsc: Path) -> None:
    path = plan.out_dir / name
    with open(path, "rb") as fh:
        reader = fastavro.reader(fh)
        fast = list(reader)
        expected = load_avsc(avsc)
        assert reader.writer_schema["name"] == f"{expected['namespace']}.{expected['name']}"
    ref = _read_reference_avro(path)
    assert len(fast) == len(ref) > 0
    assert fast == ref  # both decode timestamp-millis to aware UTC datetimes
    assert all(
        isinstance(v, datetime) and v.tzinfo is not None
        for r in fast
        for k, v in r.items()
        if k.endswith("_at") and v is not None
    )


def test_firmware_history_matches_the_rollout(plan: Plan) -> None:
    with open(plan.out_dir / "firmware_versions.avro", "rb") as fh:
        rows = list(fastavro.reader(fh))
    first = {}
    for r in rows:
        first.setdefault(r["device_id"], r)
    assert set(first) == {d.device_id for d in plan.specs}
    updates = [r for r in rows if r["firmware_version"] == "2.4.0"]
    rollout = plan.summary["rollouts"][0]
    assert len(updates) == rollout["devices"] > 0
    lo = datetime.fromisoformat(rollout["start"])
    assert all(r["installed_at"] >= lo for r in updates)


def test_alerts_correlate_with_downtime(plan: Plan) -> None:
    with open(plan.out_dir / "alerts.avro", "rb") as fh:
        alerts = list(fastavro.reader(fh))
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    faulty = {d.device_id for d in plan.specs if d.update_to == "2.4.0"}
    watchdog = [a for a in alerts if a["type"] == "watchdog_reset"]
    assert watchdog and all(a["device_id"] in faulty for a in watchdog)
    noise = [a for a in alerts if a["type"] in ("high_temperature", "low_battery", "storage_low")]
    assert noise  # unrelated alerts exist too
    assert any(a["cleared_at"] is None for a in alerts)
    for a in alerts:
        assert a["cleared_at"] is None or a["cleared_at"] > a["raised_at"]
    # a watchdog alert is raised while its device is down (during the crash loop)
    tl = {d.device_id: t for d, t in zip(plan.specs, plan.timelines, strict=True)}
    for a in watchdog:
        t = int(a["raised_at"].timestamp())
        loop_starts = [s.start_s for s in tl[a["device_id"]] if s.loop_start]
        assert any(0 <= t - s <= 60 for s in loop_starts)


def test_truth_files_and_summary(plan: Plan) -> None:
    truth = plan.out_dir / "truth"
    dd = pq.read_table(truth / "device_day.parquet")
    assert dd.column_names == ["day", "device_id", "up_s", "down_s", "device_uptime"]
    assert dd.num_rows >= 40 * 3 - 6  # late commissioning / early decommissioning drop a few
    for name in ("fleet_day", "firmware_day", "site_day"):
        assert pq.read_table(truth / f"{name}.parquet").num_rows > 0
    doc = json.loads((truth / "scenario.json").read_text())
    assert doc["faulty_firmware"] == "2.4.0"
    assert doc["devices"] == 40 and doc["days"] == 3
    assert set(doc["gateways"]) == {"gw-north", "gw-west", "gw-south"}
    assert len(doc["special_devices"]["lossy"]) == 4
    assert len(doc["special_devices"]["roaming"]) == 2
    assert len(doc["special_devices"]["skewed"]) == 1
    assert len({s["geohash5"] for s in doc["sites"]}) == len(doc["sites"])
    fw = doc["truth"]["uptime_by_firmware"]
    assert min(fw, key=fw.get) == "2.4.0"
    assert doc["messages"] is None  # filled in by publishing
    start = datetime.fromisoformat(doc["start"])
    assert start == datetime(2026, 1, 1, tzinfo=UTC)


def test_cli_dry_run_writes_everything_and_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleetpulse.cli import main

    out = tmp_path / "dry"
    args = ["sim", "--dry-run", "--devices", "6", "--days", "1", "--seed", "4"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    for name in ("registry.csv", "firmware_versions.avro", "alerts.avro"):
        assert (out / name).stat().st_size > 0
    for name in ("device_day", "fleet_day", "firmware_day", "site_day"):
        assert (out / "truth" / f"{name}.parquet").exists()
    doc = json.loads((out / "truth" / "scenario.json").read_text())
    assert doc["run"]["broker"] is None and doc["messages"]["published"] > 6 * 1000
    assert 1000 < doc["messages"]["per_device_day"] < 9000
    stdout = capsys.readouterr().out
    assert "counted (dry run)" in stdout and "per device-day" in stdout
