"""End to end against ground truth: a small fleet through real MQTT, three agents, the central
API and consolidation; gold ``device_day`` against ``truth/device_day.parquet`` (issue 6).

One ``fleetpulse demo`` run (a real Mosquitto, three ``agent run`` processes, ``agent
flush``, ``central serve``, ``central consolidate``, ``central report``) feeds every test.
The figures are recomputed here from the files, independently of ``sim/accuracy.py``; the
bars are the issue's and are not to be loosened.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tests.agent_support import ROOT

DEVICES, DAYS, SEED = 24, 3, 11
MAE_MAX_PTS = 0.5
FLEET_DAY_MAX_PTS = 0.3
# agent vs central uptime of a device-day one gateway heard (test_agent_device_day_...):
# measured 0.0000 pts on every such device-day; this only leaves room for float rounding
AGENT_CENTRAL_MAX_PTS = 0.001


@dataclass(frozen=True)
class Run:
    out: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("accuracy") / "demo"
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "demo", "--out", str(out),
         "--devices", str(DEVICES), "--days", str(DAYS), "--seed", str(SEED)],
        cwd=ROOT, capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    return Run(out, done.returncode, done.stdout, done.stderr, time.monotonic() - t0)


@pytest.fixture(scope="module")
def ok(run: Run) -> Run:
    assert run.returncode == 0, f"demo failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def _gold(run: Run, table: str) -> pa.Table:
    return DeltaTable(str(run.out / "central" / "gold" / table)).to_pyarrow_table()


def _truth(run: Run) -> pa.Table:
    return pq.read_table(run.out / "sim" / "truth" / "device_day.parquet")


def _uptime(t: pa.Table, up: str = "up_s", down: str = "down_s") -> pa.Array:
    up_s = pc.cast(t[up], pa.float64())
    return pc.divide(up_s, pc.add(up_s, pc.cast(t[down], pa.float64())))


def _joined(run: Run) -> pa.Table:
    truth = _truth(run).select(["day", "device_id", "up_s", "down_s"])
    truth = truth.rename_columns(["day", "device_id", "t_up", "t_down"])
    gold = _gold(run, "device_day").select(["day", "device_id", "up_s", "down_s"])
    gold = gold.rename_columns(["day", "device_id", "g_up", "g_down"])
    return truth.join(gold, ["day", "device_id"], join_type="left outer")


def test_every_truth_device_day_has_a_gold_uptime(ok: Run) -> None:
    j = _joined(ok)
    known = j.filter(pc.greater(pc.add(j["t_up"], j["t_down"]), 0))
    missing = known.filter(
        pc.or_(pc.is_null(known["g_up"]), pc.equal(pc.add(known["g_up"], known["g_down"]), 0))
    )
    assert missing.num_rows == 0, missing.slice(0, 10).to_pylist()
    assert known.num_rows >= DEVICES * DAYS * 0.9  # late commissioning trims a few


def test_device_day_uptime_mean_absolute_error(ok: Run) -> None:
    j = _joined(ok)
    j = j.filter(pc.greater(pc.add(j["t_up"], j["t_down"]), 0))
    err = pc.abs(pc.subtract(_uptime(j, "g_up", "g_down"), _uptime(j, "t_up", "t_down")))
    mae_pts = pc.mean(err).as_py() * 100
    print(f"device-day MAE {mae_pts:.4f} pts, max {pc.max(err).as_py() * 100:.3f} pts")
    assert mae_pts <= MAE_MAX_PTS


def test_every_fleet_day_within_bar(ok: Run) -> None:
    def by_day(t: pa.Table) -> dict[object, float]:
        g = t.group_by("day").aggregate([("up_s", "sum"), ("down_s", "sum")])
        return dict(
            zip(g["day"].to_pylist(), _uptime(g, "up_s_sum", "down_s_sum").to_pylist(), strict=True)
        )

    truth, gold = by_day(_truth(ok)), by_day(_gold(ok, "fleet_day"))
    # gold also has days outside the simulated ones (a slow clock's last minutes of the day
    # before; the real days the agents listened to a silent fleet): compare the simulated days
    assert set(truth) <= set(gold)
    errors = {str(d): (gold[d] - truth[d]) * 100 for d in truth}
    print("fleet-day errors (pts):", errors)
    assert all(abs(e) <= FLEET_DAY_MAX_PTS for e in errors.values()), errors
    # the story itself: the regression is visible in gold
    days = sorted(truth)
    assert gold[days[0]] > 0.97 and gold[days[-1]] < gold[days[0]] - 0.03


def test_faulty_firmware_has_the_lowest_uptime(ok: Run) -> None:
    faulty = json.loads((ok.out / "sim" / "truth" / "scenario.json").read_text())["faulty_firmware"]
    fw = _gold(ok, "firmware_day").filter(pc.is_valid(pc.field("firmware_version")))
    g = fw.group_by("firmware_version").aggregate([("up_s", "sum"), ("down_s", "sum")])
    uptime = dict(
        zip(g["firmware_version"].to_pylist(), _uptime(g, "up_s_sum", "down_s_sum"), strict=True)
    )
    ranked = sorted(uptime, key=lambda v: uptime[v].as_py())
    print("firmware uptime:", {v: round(uptime[v].as_py() * 100, 2) for v in ranked})
    assert faulty is not None and len(ranked) >= 2
    assert ranked[0] == faulty


def test_every_gateway_uploaded_through_the_api(ok: Run) -> None:
    ledger = ok.out / "central" / "ledger.sqlite3"
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        rows = dict(conn.execute("SELECT gateway_id, sum(row_count) FROM batches GROUP BY 1"))
    assert sorted(rows) == ["gw-north", "gw-south", "gw-west"]
    assert all(n > 0 for n in rows.values())


def test_demo_prints_the_story_and_writes_the_report(ok: Run) -> None:
    out = ok.stdout
    for stage in ("broker", "plan", "central", "agents", "publish", "drain", "flush",
                  "consolidate", "report", "check", "stop"):  # fmt: skip
        assert f" {stage} " in out and "done in" in out, stage
    assert "fleet uptime per day" in out
    assert "worst firmware: 2.4.0" in out
    assert "worst sites:" in out and "where to look next:" in out
    assert "accuracy: PASS" in out
    report = (ok.out / "report.html").read_text(encoding="utf-8")
    assert report.count("<svg") >= 5 and "2.4.0" in report
    assert (ok.out / "central" / "central.toml").is_file()
    figures = json.loads((ok.out / "demo.json").read_text())
    assert figures["accuracy"]["passed"] is True
    print(f"demo wall time {ok.seconds:.1f} s; stages {figures['timings_s']}")


def _gateways_per_device_day(run: Run) -> dict[tuple[object, str], int]:
    """(day, device) -> how many gateways uploaded readings of it that day (2+: roaming)."""
    parts = []
    for f in sorted((run.out / "central" / "landing").rglob("*.parquet")):
        t = pq.read_table(f, columns=["record_type", "gateway_id", "device_id", "ts"])
        t = t.filter(pc.equal(t["record_type"], "reading"))
        parts.append(pa.table({
            "day": pc.cast(t["ts"], pa.date32()),
            "device_id": t["device_id"],
            "gateway_id": t["gateway_id"],
        }))  # fmt: skip
    g = (
        pa.concat_tables(parts)
        .group_by(["day", "device_id"])
        .aggregate([("gateway_id", "count_distinct")])
    )
    return {
        (d, dev): n
        for d, dev, n in zip(g["day"].to_pylist(), g["device_id"].to_pylist(),
                             g["gateway_id_count_distinct"].to_pylist(), strict=True)
    }  # fmt: skip


def test_agent_device_day_holds_each_gateways_local_view(ok: Run) -> None:
    """Every agent shipped its local KPI rows (schema v2); gold ``agent_device_day`` holds the
    latest per gateway, device and day, and agrees with central's ``device_day`` wherever
    the gateway saw all of the device's readings.

    Each agent has the whole registry, so it also has rows for the other gateways' devices
    (never heard: no up time); the row to compare is the one of the gateway that heard the
    device most. Both sides run one definition (DESIGN §4) on the same readings, with the
    same registry and gap_k: measured on this demo (seed 11) the device-days whose readings
    came through one gateway agree exactly (0.0000 pts on all 83 of 84), so the bar only
    allows float rounding. A roaming device's day is heard by two gateways: each agent sees only
    its part (here 10 h at another site count as down for the home gateway, 41.7 pts), and
    central merges both — that difference is what the table exists to show.
    """
    agent = _gold(ok, "agent_device_day")
    assert sorted(set(agent["gateway_id"].to_pylist())) == ["gw-north", "gw-south", "gw-west"]
    key = ["gateway_id", "day", "device_id"]
    assert agent.group_by(key).aggregate([("up_s", "count")]).num_rows == agent.num_rows
    heard = agent.filter(pc.greater(agent["up_s"], 0))
    best = heard.group_by(["day", "device_id"]).aggregate([("up_s", "max")])
    local = heard.join(best, ["day", "device_id"]).filter(
        pc.equal(pc.field("up_s"), pc.field("up_s_max"))
    )
    local = local.select(["day", "device_id", "gateway_id", "device_uptime"])
    gold = _gold(ok, "device_day").select(["day", "device_id", "device_uptime"])
    j = local.join(gold.rename_columns(["day", "device_id", "g_uptime"]), ["day", "device_id"])
    j = j.filter(pc.and_(pc.is_valid(j["device_uptime"]), pc.is_valid(j["g_uptime"])))
    assert j.num_rows >= DEVICES * DAYS * 0.9
    gateways = _gateways_per_device_day(ok)
    single, roaming = [], []
    for r in j.to_pylist():
        diff = abs(r["device_uptime"] - r["g_uptime"]) * 100
        # no reading that day at all: up time only from the last one before midnight
        (single if gateways.get((r["day"], r["device_id"]), 0) <= 1 else roaming).append(diff)
    print(f"agent vs central device-day uptime: {len(single)} device-days heard by one "
          f"gateway, max diff {max(single):.4f} pts; {len(roaming)} roaming, diffs "
          f"{sorted(round(d, 3) for d in roaming)} pts")  # fmt: skip
    assert len(single) >= 0.9 * j.num_rows
    assert max(single) <= AGENT_CENTRAL_MAX_PTS
