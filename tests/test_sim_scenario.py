"""Scenario files: the built-in one loads, bad files fail naming the key, docs cover every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from fleetpulse.cli import main
from sim import ScenarioError, builtin_names, load_scenario
from sim.scenario import Scenario

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "sim" / "scenarios" / "firmware-regression.toml"


def test_builtin_scenario_loads_with_a_faulty_firmware() -> None:
    assert "firmware-regression" in builtin_names()
    sc = load_scenario("firmware-regression")
    assert sc.faulty_firmware == "2.4.0"
    expected = {f.version: f.expected_uptime() for f in sc.firmware}
    assert 0.985 < expected["2.3.1"] < 0.995 and 0.98 < expected["2.2.0"] < 0.995
    assert 0.75 < expected["2.4.0"] < 0.82
    # three gateways, each with its own sites, so the demo can split the fleet
    filters = sc.topic_filters()
    assert len(filters) == 3
    all_sites = [f for fs in filters.values() for f in fs]
    assert sorted(all_sites) == sorted(f"fleet/{s.name}/#" for s in sc.sites)


def test_a_path_loads_like_a_name(tmp_path: Path) -> None:
    copy = tmp_path / "mine.toml"
    copy.write_text(BUILTIN.read_text())
    assert load_scenario(copy) == load_scenario("firmware-regression")


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = BUILTIN.read_text()
    assert old in text, old
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("mtbf_h = 14.0", "mtbf_hours = 14.0", ["firmware[0].mtbf_hours", "unknown key"]),
        ("lat = 53.2194", "lat = 253.2194", ["sites[1].lat", "253.2194"]),
        ("loss_rate = 0.05", "loss_rate = 1.5", ["links.loss_rate"]),
        ('firmware = "2.4.0"', 'firmware = "2.5.0"', ["rollouts[0].firmware", "2.5.0"]),
        ("share = 0.7", "share = 0.9", ["firmware", "add up to 1.2"]),
        ('utc_offset = "+01:00"', 'utc_offset = "CET"', ["sites[0].utc_offset", "CET"]),
        ("start = 2026-01-01T00:00:00Z", "start = 2026-01-01T06:00:00Z", ["start", "midnight"]),
        ("[links]", "[link]", ["link", "unknown key"]),
        ("days = 4", "days = 0", ["days"]),
    ],
)
def test_bad_scenario_names_the_key(tmp_path: Path, old: str, new: str, names: list[str]) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(_broken(tmp_path, old, new))
    for name in names:
        assert name in str(info.value)


def test_not_toml_and_unknown_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'.*firmware-regression"):
        load_scenario("nope")


def test_overrides_are_validated() -> None:
    sc = load_scenario("firmware-regression")
    assert sc.with_overrides(devices=7, days=2, seed=3).total_devices == 7
    with pytest.raises(ScenarioError, match="days"):
        sc.with_overrides(days=1000)


def test_cli_bad_scenario_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _broken(tmp_path, "mttr_s = 420", "mttr_s = -1")
    code = main(["sim", "--scenario", str(path), "--dry-run", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "firmware[0].mttr_s" in err[0]
    assert not (tmp_path / "o").exists()


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    out = [model]
    for field in model.model_fields.values():
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in out:
                out += _models(arg)
    return out


def test_docs_describe_every_scenario_key() -> None:
    doc = (ROOT / "docs" / "simulator.md").read_text()
    missing = [
        f"{m.__name__}.{name}"
        for m in _models(Scenario)
        for name in m.model_fields
        if not re.search(rf"`\[*{name}\]*`", doc)
    ]
    assert not missing, f"docs/simulator.md does not describe {missing}"


def test_docs_describe_every_cli_flag() -> None:
    doc = (ROOT / "docs" / "simulator.md").read_text()
    for flag in ("--broker", "--scenario", "--devices", "--days", "--seed", "--out", "--speed"):
        assert flag in doc
    for flag in ("--client", "--dry-run", "--quiet"):
        assert flag in doc


def test_public_api_is_complete() -> None:
    import types

    import sim

    public = {
        n
        for n, v in vars(sim).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(sim.__all__)
