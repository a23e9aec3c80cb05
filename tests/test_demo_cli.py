"""``fleetpulse demo``: the configs it writes load, failures name their stage, nothing is left
running after Ctrl-C or a kill, and the accuracy figures are computed as the issue defines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psutil
import pyarrow as pa
import pytest

from agent.config import load_config as load_agent_config
from central.config import load_config as load_central_config
from sim import demo
from sim.accuracy import compare, describe
from sim.demo_procs import StageFailed, free_port
from tests.agent_support import ROOT

D1, D2 = date(2026, 1, 1), date(2026, 1, 2)


def _demo(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleetpulse", "demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,  # type: ignore[call-overload]
    )


def _children_of_run(out: Path, demo_pid: int) -> list[psutil.Process]:
    """Processes other than the demo whose command line names this run's folder (broker,
    central, agents)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(out) in cmd and p.pid not in (demo_pid, os.getpid()):
            found.append(p)
    return found


def test_agent_config_the_demo_writes_loads(tmp_path: Path) -> None:
    text = demo.agent_toml(
        "gw-north",
        tmp_path / "data dir",
        "127.0.0.1",
        1883,
        ["fleet/ams/#", "fleet/gro/#"],
        username="u",
        password_file=tmp_path / "pw",
    )
    (tmp_path / "agent.toml").write_text(text)
    cfg = load_agent_config(tmp_path / "agent.toml", environ={})
    assert cfg.gateway_id == "gw-north"
    assert cfg.mqtt.topics == ["fleet/ams/#", "fleet/gro/#"]
    assert cfg.data_dir == tmp_path / "data dir"
    assert cfg.mqtt.username == "u"


def test_agent_config_with_upload_keys_loads(tmp_path: Path) -> None:
    text = demo.agent_toml(
        "gw-1",
        tmp_path,
        "127.0.0.1",
        1883,
        ["fleet/#"],
        central_url="http://127.0.0.1:9",
        token_file=tmp_path / "tok",
        registry=tmp_path / "reg.csv",
        metrics_port=9200,
        protocol="mqttv311",
    )
    (tmp_path / "agent.toml").write_text(text)
    cfg = load_agent_config(tmp_path / "agent.toml", environ={})
    assert cfg.central.url == "http://127.0.0.1:9"
    assert cfg.central.token_file == tmp_path / "tok"
    assert cfg.registry.path == tmp_path / "reg.csv"
    assert cfg.metrics_listen == "127.0.0.1:9200"
    assert cfg.mqtt.protocol == "mqttv311"


def test_central_config_the_demo_writes_loads(tmp_path: Path) -> None:
    (tmp_path / "central.toml").write_text(demo.central_toml(tmp_path / "c", 8123, tmp_path))
    cfg = load_central_config(tmp_path / "central.toml", environ={})
    assert cfg.port == 8123 and cfg.data_dir == tmp_path / "c"
    assert cfg.sources.alerts == tmp_path / "alerts.avro"


def test_children_do_not_inherit_fleetpulse_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPULSE_MQTT__PORT", "1")
    assert "FLEETPULSE_MQTT__PORT" not in demo.child_env()


def test_no_broker_at_all_names_both_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "mosquitto_binary", lambda: None)
    monkeypatch.setattr(demo, "amqtt_available", lambda: False)
    with pytest.raises(StageFailed) as exc:
        demo.run_demo(demo.Options(out=tmp_path / "d"), lambda ev: None)
    assert exc.value.stage == "broker"
    assert "apt-get install mosquitto" in str(exc.value)
    assert "pip install amqtt" in str(exc.value)


def test_unreachable_external_broker_fails_the_broker_stage(tmp_path: Path) -> None:
    port = free_port()
    p = _demo("--out", str(tmp_path / "d"), "--broker", f"mqtt://127.0.0.1:{port}")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert err.strip().splitlines()[-1].startswith("fleetpulse demo: stage broker: nothing answers")
    assert "broker" in out


def test_bad_broker_url_is_one_line(tmp_path: Path) -> None:
    p = _demo("--out", str(tmp_path / "d"), "--broker", "http://x")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "scheme 'http' is not supported" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_nothing_left_running_after_interrupt_or_kill(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "d"
    p = _demo("--out", str(out), "--devices", "12", "--days", "2")
    assert p.stdout is not None
    deadline = time.monotonic() + 120
    for line in p.stdout:  # wait until broker, central and agents run
        if "publish" in line or time.monotonic() > deadline:
            break
    assert len(_children_of_run(out, p.pid)) >= 5  # mosquitto, central, three agents
    os.kill(p.pid, sig)
    p.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert p.returncode == 130
    deadline = time.monotonic() + 30
    while _children_of_run(out, p.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children_of_run(out, p.pid) == []


def _dd(rows: list[tuple[date, str, float, float]]) -> pa.Table:
    return pa.table(
        {
            "day": [r[0] for r in rows],
            "device_id": [r[1] for r in rows],
            "up_s": [r[2] for r in rows],
            "down_s": [r[3] for r in rows],
        }
    )


def _fw(rows: list[tuple[date, str | None, float, float]]) -> pa.Table:
    return pa.table(
        {
            "day": [r[0] for r in rows],
            "firmware_version": pa.array([r[1] for r in rows], pa.string()),
            "up_s": [r[2] for r in rows],
            "down_s": [r[3] for r in rows],
        }
    )


def test_accuracy_figures_by_hand() -> None:
    truth = _dd([(D1, "a", 86400, 0), (D1, "b", 43200, 43200), (D2, "a", 86400, 0)])
    # a on D1: 1 point low; b on D1: exact; a on D2: missing from gold
    gold = _dd([(D1, "a", 85536, 864), (D1, "b", 43200, 43200)])
    fw = _fw([(D1, "1.0", 100, 0), (D1, "2.0", 50, 50), (D1, None, 0, 100)])
    a = compare(gold, truth, fw, "2.0")
    assert a.device_days == 3 and a.matched == 2
    assert a.missing == [(D2, "a")]
    assert a.device_day_mae_pts == pytest.approx(0.5)
    assert a.device_day_max_pts == pytest.approx(1.0) and a.worst_device_day == (D1, "a")
    # fleet D1: truth 129600/172800 = 75 %, gold 128736/172800 = 74.5 %
    assert a.fleet_day_error_pts[D1] == pytest.approx(-0.5)
    assert a.fleet_day_error_pts[D2] is None
    assert a.lowest_firmware == "2.0" and a.faulty_is_lowest
    assert not a.passed  # a missing device-day and a 0.5-point fleet-day error
    assert any("FAIL" in line for line in describe(a))


def test_accuracy_passes_within_the_bars() -> None:
    truth = _dd([(D1, "a", 86400, 0), (D1, "b", 43200, 43200)])
    gold = _dd([(D1, "a", 86400 - 86.4, 86.4), (D1, "b", 43200, 43200)])  # 0.1 point
    fw = _fw([(D1, "1.0", 100, 0), (D1, "2.0", 50, 50)])
    a = compare(gold, truth, fw, "2.0")
    assert a.device_day_mae_pts == pytest.approx(0.05)
    assert a.passed
    assert not compare(gold, truth, fw, "1.0").passed  # the wrong firmware is not lowest


def test_every_demo_flag_is_documented() -> None:
    import argparse

    from sim.demo_cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), "demo", "demo")
    sub = parser._subparsers._group_actions[0].choices["demo"]  # type: ignore[union-attr]
    doc = (ROOT / "docs" / "demo.md").read_text(encoding="utf-8")
    flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    assert {"--out", "--broker", "--devices", "--days", "--seed"} <= set(flags)
    undocumented = [f for f in flags if f != "--help" and f"`{f}" not in doc]
    assert undocumented == []
