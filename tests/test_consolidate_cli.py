"""``fleetpulse central consolidate`` and ``runs`` as a user runs them, on real files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from central.consolidate import cli as consolidate_cli
from central.consolidate import engine as E
from central.consolidate.dag import GOLD_TABLES
from tests.consolidate_support import land, make_fleet, split_batches, write_config, write_sources

REPO = Path(__file__).resolve().parent.parent


def fleetpulse(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", "central", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def landed(tmp_path: Path) -> tuple[Path, Path]:
    fleet = make_fleet(n_devices=12, hours=26, n_gateways=2, seed=3)
    data = tmp_path / "data"
    data.mkdir()
    land(data, split_batches(fleet))
    return data, write_config(tmp_path, data, write_sources(tmp_path / "src", fleet))


def test_consolidate_then_runs_lists_the_lineage(landed: tuple[Path, Path]) -> None:
    data, cfg = landed
    r = fleetpulse("consolidate", "--config", str(cfg), "--progress", "always")
    assert r.returncode == 0, r.stderr
    assert f"published {len(GOLD_TABLES)} table(s)" in r.stdout and len(GOLD_TABLES) == 8
    assert "] 4" in r.stderr and "/" in r.stderr  # the progress bar was drawn
    for name in GOLD_TABLES:
        assert DeltaTable(str(data / "gold" / name)).version() == 0

    again = fleetpulse("consolidate", "--config", str(cfg))
    assert again.returncode == 0 and "nothing new" in again.stdout

    listing = fleetpulse("runs", "--config", str(cfg))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.strip().splitlines()
    assert lines[0].startswith("RUN_ID") and len(lines) == 3
    assert " ok " in lines[1] and " nothing_new " in lines[2]

    run_id = lines[1].split()[0]
    shown = fleetpulse("runs", "--config", str(cfg), run_id)
    record = json.loads(shown.stdout)
    batches = record["inputs"]["new_batches"]
    assert batches and all(len(b["sha256"]) == 64 and b["rows"] > 0 for b in batches)
    assert record["inputs"]["sources"]["alerts"]["sha256"]
    steps = {s["name"]: s for s in record["pipeline"]["steps"]}
    bronze = steps["bronze"]
    assert bronze["output"]["rows"] < bronze["inputs"]["valid_readings"]["rows"]  # dedup
    assert "batch_id" in bronze["output"]["schema"] and "ingested_at" in bronze["output"]["schema"]
    assert bronze["duration_s"] >= 0 and bronze["schema_diff"]["valid_readings"]["removed"]
    assert {g["gate"] for g in record["pipeline"]["gates"]} >= {
        "kpi_in_range",
        "time_adds_up",
        "ledger_reconciles",
        "unique_device_day",
    }
    assert all(g["passed"] for g in record["pipeline"]["gates"])
    assert {p["table"] for p in record["published"]} == set(GOLD_TABLES)
    assert steps["firmware_rows"]["cache"] == "miss"


def test_a_failed_gate_publishes_nothing_and_names_the_rows(landed: tuple[Path, Path]) -> None:
    data, cfg = landed
    # the ledger now claims one batch has a row more than its file holds
    with sqlite3.connect(data / "ledger.sqlite3") as db:
        bid = db.execute("SELECT batch_id FROM batches ORDER BY batch_id LIMIT 1").fetchone()[0]
        db.execute("UPDATE batches SET row_count = row_count + 1 WHERE batch_id = ?", (bid,))
    r = fleetpulse("consolidate", "--config", str(cfg))
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("fleetpulse central: validation gates failed, nothing was published")
    assert "ledger_reconciles" in err and bid in err
    assert not (data / "gold").exists()
    runs = fleetpulse("runs", "--config", str(cfg), "--json")
    assert json.loads(runs.stdout)[-1]["status"] == "gate_failed"


def test_config_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "central.toml"
    cfg.write_text('data_dir = "/tmp/x"\n[sources]\nregistyr = "r.csv"\n')
    r = fleetpulse("consolidate", "--config", str(cfg))
    assert r.returncode == 2
    assert "unknown config key 'sources.registyr'" in r.stderr


def test_a_missing_source_file_is_named(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tmp_path / "data", {"registry": tmp_path / "no.csv"})
    r = fleetpulse("consolidate", "--config", str(cfg))
    assert r.returncode == 1
    assert "[sources] registry" in r.stderr and "no.csv" in r.stderr


def test_cli_engine_choices_match_the_engines() -> None:
    assert consolidate_cli.ENGINES == E.ENGINES
