"""``fleetpulse central report`` on gold Delta tables written here: figures, plots, lineage,
self-containment, and the errors a person meets first."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pytest

from central.report import GoldInvalid, GoldMissing, build_report, load_gold
from central.report.summary import pct
from tests.central_support import cli, write_config
from tests.report_support import (
    DAYS,
    FAULTY,
    LOSSY_DEVICE,
    fleet_rows,
    gold_tables,
    text_of,
    uptime,
    write_gold,
    write_run_record,
)

PLOT_TITLES = [
    "Fleet uptime by day",
    "Uptime by firmware version over time",
    "Uptime by site",
    "Geohash grid heat map",
    "Top devices by downtime",
    "Alerts against downtime",
    "Connectivity against uptime",
]


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with gold tables and one ok run record (written once for the module)."""
    data = tmp_path_factory.mktemp("data")
    write_gold(data / "gold", gold_tables(fleet_rows()))
    write_run_record(data / "runs", "run-0001", ["gw-north-000001", "gw-west-000002"])
    return data


@pytest.fixture(scope="module")
def report(fleet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report as the CLI writes it."""
    where = tmp_path_factory.mktemp("out")
    out = where / "report.html"
    config = write_config(where / "central.toml", fleet_dir)
    done = cli("central", "report", "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    return out.read_text(encoding="utf-8")


def test_fleet_uptime_per_day_is_the_time_weighted_rollup(report: str) -> None:
    rows = fleet_rows().device_day
    text = text_of(report)
    for day in DAYS:
        day_rows = [r for r in rows if r["day"] == day]
        expected = uptime(day_rows)
        # a mean of per-device ratios would differ: the report must not show that one
        mean = sum(r["device_uptime"] for r in day_rows) / len(day_rows)
        assert pct(expected) in text
        assert f"{day:%b %d, %Y} {pct(expected)}" in text, f"tile of {day}"
        if pct(mean) != pct(expected):
            assert f"{day:%b %d, %Y} {pct(mean)}" not in text
    assert f"Fleet uptime {pct(uptime(rows))} from Jan 01, 2026 to Jan 03, 2026" in text


def test_worst_firmware_against_the_rest(report: str) -> None:
    parts = fleet_rows().device_firmware_day
    faulty = [r for r in parts if r["firmware_version"] == FAULTY]
    rest = [r for r in parts if r["firmware_version"] != FAULTY]
    text = text_of(report)
    assert (
        f"Worst firmware: {FAULTY} at {pct(uptime(faulty))} against {pct(uptime(rest))} "
        "on all other versions" in text
    )
    share = sum(r["down_s"] for r in faulty) / sum(r["down_s"] for r in parts)
    assert f"{pct(share, 0)} of all downtime" in text
    assert f"Firmware {FAULTY}: {pct(uptime(faulty))} uptime" in text  # where to look next


def test_worst_sites_and_where_to_look(report: str) -> None:
    fleet = fleet_rows()
    text = text_of(report)
    by_site = {
        s: uptime([r for r in fleet.device_day if r["site"] == s])
        for s in {r["site"] for r in fleet.device_day}
    }
    worst = sorted(by_site, key=lambda s: by_site[s])
    assert worst[0] == "gro"
    site_of = {r["device_id"]: r["site"] for r in fleet.device_day}
    gro_without = uptime(
        [
            r
            for r in fleet.device_firmware_day
            if site_of[r["device_id"]] == "gro" and r["firmware_version"] != FAULTY
        ]
    )
    assert f"Worst sites: gro {pct(by_site['gro'])} ({pct(gro_without)} without {FAULTY})" in text
    assert "the site is fine, the firmware is not" in text
    # ein lost power and never ran the faulty version: the report sends you to the site
    assert f"Site ein: {pct(by_site['ein'])}, and still {pct(by_site['ein'])} without" in text
    assert "check the site itself" in text
    assert f"({LOSSY_DEVICE})" in text and "lossy links" in text
    assert "1 row(s) were quarantined" in text


def test_every_plot_is_inline_svg(report: str) -> None:
    assert report.count("<svg") == len(PLOT_TITLES)
    assert report.count("</svg>") == len(PLOT_TITLES)
    for title in PLOT_TITLES:
        assert f"<h3>{title}</h3>" in report
        assert f'aria-label="{title.lower()}"' in report
    # plot text is kept as text: the per-day values are readable inside the first plot
    first_svg = report[report.index("<svg") : report.index("</svg>")]
    day1 = uptime([r for r in fleet_rows().device_day if r["day"] == DAYS[0]])
    assert f"{day1 * 100:.1f}%" in first_svg
    # top devices: the device with the most downtime is on the plot
    assert "gro-02 (gro)" in report


def test_self_contained(report: str) -> None:
    lowered = report.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered
    assert "<link" not in lowered and "<img" not in lowered and "<iframe" not in lowered
    assert re.findall(r"url\((.)", lowered) == ["#"] * lowered.count("url(")  # fragments only
    assert "@import" not in lowered
    # the only href values are in-document fragments (matplotlib's <use> markers) and the
    # colorbar's inline PNG
    for ref in re.findall(r'(?:href|src)="([^"]*)"', report):
        assert ref.startswith(("#", "data:image/png;base64,")), ref[:40]
    assert report.startswith("<!DOCTYPE html>")


def test_svg_ids_are_unique_and_resolve(report: str) -> None:
    # Seven SVGs share one document: matplotlib's per-figure ids must not clash.
    ids = re.findall(r'\bid="([^"]+)"', report)
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r"url\(#([^)]+)\)", report)) | set(re.findall(r'href="#([^"]+)"', report))
    assert refs and refs <= set(ids)


def test_lineage_of_the_run(report: str) -> None:
    text = text_of(report)
    assert "The tables come from run run-0001 of consolidate : ok" in text
    assert "duckdb full, days 2026-01-01 to 2026-01-03" in text
    assert "consolidated 2 new batch(es) (full)" in text
    assert "device_day_rows ok 2 2" in text  # the step: status, rows out, columns
    assert "rows_positive device_day_rows passed 2 0" in text  # the gate: checked, failed
    assert "gw-north-000001 gw-north 10" in text and "gw-west-000002 gw-west 10" in text
    assert "registry /src/registry.csv abababababababab" in text  # source file and digest
    assert "device_day 0 72 whole table" in text  # published
    for table in ("device_day", "fleet_day", "firmware_day", "site_day", "geo_day"):
        assert re.search(rf"<td>{table}</td><td class=\"n\">0</td>", report), table


def test_missing_gold_is_one_clear_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "central.toml", tmp_path / "data")
    out = tmp_path / "report.html"
    done = cli("central", "report", "--config", str(config), "--out", str(out))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "run `fleetpulse central consolidate` first" in lines[0]
    assert str(tmp_path / "data" / "gold") in lines[0]
    assert not out.exists()


def test_partly_missing_gold_names_the_tables(tmp_path: Path) -> None:
    write_gold(tmp_path / "gold", gold_tables(fleet_rows()), skip=("geo_day", "site_day"))
    with pytest.raises(GoldMissing, match=r"site_day, geo_day missing under .*consolidate"):
        load_gold(tmp_path / "gold")


def test_missing_column_names_it(tmp_path: Path) -> None:
    tables = gold_tables(fleet_rows())
    tables["site_day"] = tables["site_day"].drop_columns(["down_s"])
    write_gold(tmp_path / "gold", tables)
    with pytest.raises(GoldInvalid, match=r"'site_day' has no column 'down_s'"):
        load_gold(tmp_path / "gold")


def test_empty_gold_is_an_error(tmp_path: Path) -> None:
    tables = {n: t.slice(0, 0) for n, t in gold_tables(fleet_rows()).items()}
    write_gold(tmp_path / "gold", tables)
    with pytest.raises(GoldMissing, match="has no rows"):
        load_gold(tmp_path / "gold")


def test_extra_columns_and_no_optional_tables_still_render(tmp_path: Path) -> None:
    tables = gold_tables(fleet_rows())
    tables["device_day"] = tables["device_day"].append_column(
        "added_later", pa.array(["x"] * tables["device_day"].num_rows)
    )
    write_gold(tmp_path / "gold", tables, skip=("device_firmware_day", "quarantine"))
    html = build_report(tmp_path / "gold", tmp_path / "runs")
    assert html.count("<svg") == len(PLOT_TITLES)
    text = text_of(html)
    assert "No successful run record was found" in text
    assert "without 2.4.0" not in text  # needs device_firmware_day: not claimed without it
    assert "quarantined" not in text


def test_newer_failed_run_is_called_out(tmp_path: Path) -> None:
    write_gold(tmp_path / "gold", gold_tables(fleet_rows()))
    runs = tmp_path / "runs"
    paths = [
        write_run_record(runs, "run-0001", ["gw-north-000001"]),
        write_run_record(
            runs,
            "run-0002",
            ["gw-north-000002"],
            "gate_failed",
            "validation gates failed, nothing was published: gate 'x' rejected 3",
        ),
        write_run_record(runs, "run-0003", [], "nothing_new", "nothing new since the last run"),
    ]
    for i, path in enumerate(paths):  # oldest first, whatever the file system's resolution
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    (runs / "broken.json").write_text("{not json")
    os.utime(runs / "broken.json", ns=(10**18 - 10**9, 10**18 - 10**9))
    text = text_of(build_report(tmp_path / "gold", runs))
    assert "The tables come from run run-0001" in text
    assert "A newer run published nothing: run-0002" in text
    assert "gate 'x' rejected 3" in text
    assert "run-0003" in text and "nothing_new" in text  # in the history, not called a failure
    assert "A newer run published nothing: run-0003" not in text


def test_no_successful_run(tmp_path: Path) -> None:
    write_gold(tmp_path / "gold", gold_tables(fleet_rows()))
    write_run_record(tmp_path / "runs", "run-0001", ["b-000001"], "failed", "engine broke")
    text = text_of(build_report(tmp_path / "gold", tmp_path / "runs"))
    assert "No successful run record was found" in text
    assert "A newer run published nothing: run-0001" in text and "engine broke" in text


def test_since_until(tmp_path: Path, fleet_dir: Path) -> None:
    out = tmp_path / "r.html"
    config = write_config(tmp_path / "central.toml", fleet_dir)
    done = cli(
        "central", "report", "--config", str(config), "--out", str(out), "--since", "2026-01-02"
    )
    assert done.returncode == 0, done.stderr
    text = text_of(out.read_text())
    rows = [r for r in fleet_rows().device_day if r["day"] >= DAYS[1]]
    assert f"Fleet uptime {pct(uptime(rows))} from Jan 02, 2026 to Jan 03, 2026" in text
    assert "Jan 01, 2026" not in text
    bad = cli(
        "central",
        "report",
        "--config",
        str(config),
        "--out",
        str(out),
        "--since",
        "2026-01-03",
        "--until",
        "2026-01-01",
    )
    assert bad.returncode == 2 and "after --until" in bad.stderr
    gone = cli(
        "central", "report", "--config", str(config), "--out", str(out), "--since", "2027-01-01"
    )
    assert gone.returncode == 1 and "widen --since/--until" in gone.stderr


def test_unwritable_out_is_one_line(tmp_path: Path, fleet_dir: Path) -> None:
    config = write_config(tmp_path / "central.toml", fleet_dir)
    (tmp_path / "file").write_text("")
    done = cli(
        "central", "report", "--config", str(config), "--out", str(tmp_path / "file" / "r.html")
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "cannot write the report" in done.stderr and "--out" in done.stderr


def test_data_is_escaped(tmp_path: Path) -> None:
    fleet = fleet_rows()
    for r in fleet.device_day:
        if r["device_id"] == "gro-02":
            r["device_id"] = '<script>alert("x")</script>'
    write_gold(tmp_path / "gold", gold_tables(fleet))
    html = build_report(tmp_path / "gold", tmp_path / "runs")
    assert "<script" not in html
    assert "&lt;script&gt;" in html


def test_same_tables_same_report(fleet_dir: Path) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 4, tzinfo=UTC)
    a = build_report(fleet_dir / "gold", fleet_dir / "runs", now=now)
    b = build_report(fleet_dir / "gold", fleet_dir / "runs", now=now)
    assert a == b


def test_target_from_config_when_gold_has_none(tmp_path: Path) -> None:
    tables = gold_tables(fleet_rows())
    tables["fleet_day"] = tables["fleet_day"].drop_columns(["uptime_target"])
    write_gold(tmp_path / "data" / "gold", tables)
    config = write_config(tmp_path / "central.toml", tmp_path / "data")
    with config.open("a") as f:
        f.write("[consolidate]\nuptime_target = 0.95\n")
    out = tmp_path / "r.html"
    done = cli("central", "report", "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = text_of(out.read_text())
    assert "(target 95.0%)" in text
    assert "carry no uptime target; 95.0% ([consolidate] uptime_target" in text


def test_every_flag_is_documented() -> None:
    import argparse

    from fleetpulse.cli import build_parser

    def sub(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        chosen: argparse.ArgumentParser = action.choices[name]
        return chosen

    report = sub(sub(build_parser(["central"]), "central"), "report")
    flags = [s for a in report._actions for s in a.option_strings if s.startswith("--")]
    doc = (Path(__file__).parent.parent / "docs" / "report.md").read_text()
    assert len(flags) >= 6
    for flag in flags:
        if flag != "--help":
            assert f"`{flag}" in doc, f"{flag} is not in docs/report.md"


def test_report_file_honours_umask(tmp_path: Path) -> None:
    from central.report import write_report

    old = os.umask(0o022)
    try:
        write_report(tmp_path / "r.html", "<!DOCTYPE html>")
    finally:
        os.umask(old)
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temp file left
