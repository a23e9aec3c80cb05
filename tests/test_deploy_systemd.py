"""The systemd units in deploy/systemd/ verify cleanly, are hardened, and match the agent."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.deploy_support import SYSTEMD, analyze, exposure, verify_root

AGENT = SYSTEMD / "fleetpulse-agent.service"
CENTRAL = SYSTEMD / "fleetpulse-central.service"
CONSOLIDATE = SYSTEMD / "fleetpulse-consolidate.service"
TIMER = SYSTEMD / "fleetpulse-consolidate.timer"
UNITS = [AGENT, CENTRAL, CONSOLIDATE, TIMER]
SERVICES = [AGENT, CENTRAL, CONSOLIDATE]
# The issue's bar for the agent; central's units meet it too (recorded in docs/operations.md).
MAX_EXPOSURE = 2.0


def directives(unit: Path) -> dict[str, list[str]]:
    """``Key`` → every value it is given (systemd keys repeat: Environment=, LoadCredential=)."""
    out: dict[str, list[str]] = defaultdict(list)
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out[key.strip()].append(value.strip())
    return dict(out)


def host_units() -> Path:
    for candidate in (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system")):
        if (candidate / "multi-user.target").exists():
            return candidate
    pytest.fail("no systemd unit directory with multi-user.target on this machine")


def make_root(root: Path, units: list[Path], stub_binaries: bool = True) -> Path:
    """A temp root: the host's own units (so dependencies resolve) plus ours and stubs."""
    shutil.copytree(host_units(), root / "lib" / "systemd" / "system", symlinks=True)
    verify_root(root, units, stub_binaries=stub_binaries)
    return root


def verify(root: Path, *names: str) -> tuple[int, str]:
    proc = analyze(
        "verify",
        "--recursive-errors=yes",
        "--man=no",
        f"--root={root}",
        *[f"/etc/systemd/system/{n}" for n in names],
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_all_units_verify_cleanly(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", UNITS)
    rc, output = verify(root, *(u.name for u in UNITS))
    assert (rc, output) == (0, "")


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("ProtectHome=yes\n", "Unknown key"),  # a typo'd directive
        ("Type=notify\n", "Failed to parse service type"),
        ("Wants=network-online.target mosquitto.service\n", "not found"),
    ],
)
def test_verify_fails_on_a_broken_agent_unit(tmp_path: Path, broken: str, expected: str) -> None:
    """The check above is real: the same run fails on a typo or a bad dependency."""
    replacement = {
        "ProtectHome=yes\n": "ProtectHomes=yes\n",
        "Type=notify\n": "Type=notifyy\n",
        "Wants=network-online.target mosquitto.service\n": "Requires=no-such-thing.service\n",
    }[broken]
    text = AGENT.read_text()
    assert broken in text
    bad = tmp_path / AGENT.name
    bad.write_text(text.replace(broken, replacement))
    root = make_root(tmp_path / "root", [bad])
    rc, output = verify(root, AGENT.name)
    assert rc != 0
    assert expected in output


def test_verify_fails_when_the_binary_is_missing(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", [AGENT], stub_binaries=False)
    rc, output = verify(root, AGENT.name)
    assert rc != 0
    assert "/opt/fleetpulse/venv/bin/fleetpulse is not executable" in output


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_exposure_is_at_most_two(unit: Path) -> None:
    score, report = exposure(unit)
    assert score <= MAX_EXPOSURE, report
    # and systemd-analyze itself enforces it as a threshold (its scale is x10)
    proc = analyze("security", "--offline=yes", "--threshold=20", "--no-pager", str(unit))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_exposure_check_catches_an_unhardened_unit(tmp_path: Path) -> None:
    plain = tmp_path / "plain.service"
    plain.write_text("[Service]\nExecStart=/opt/fleetpulse/venv/bin/fleetpulse agent run\n")
    score, _ = exposure(plain)
    assert score > MAX_EXPOSURE
    proc = analyze("security", "--offline=yes", "--threshold=20", "--no-pager", str(plain))
    assert proc.returncode != 0


def test_agent_unit_has_what_the_issue_asks() -> None:
    d = directives(AGENT)
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    # the agent CLI exits 2 on a config error: no restart loop for that
    assert d["RestartPreventExitStatus"] == ["2"]
    assert d["DynamicUser"] == ["yes"]
    assert d["StateDirectory"] == ["fleetpulse"]
    assert "central-token:/etc/fleetpulse/central-token" in d["LoadCredential"]
    assert "FLEETPULSE_CENTRAL__TOKEN_FILE=%d/central-token" in d["Environment"]
    assert d["ExecStart"] == [
        "/opt/fleetpulse/venv/bin/fleetpulse agent run --config /etc/fleetpulse/agent.toml"
    ]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }.items():
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["MemoryMax"]


def test_central_units_and_timer() -> None:
    serve, job, timer = directives(CENTRAL), directives(CONSOLIDATE), directives(TIMER)
    assert serve["ExecStart"] == [
        "/opt/fleetpulse/venv/bin/fleetpulse central serve --config /etc/fleetpulse/central.toml"
    ]
    assert job["ExecStart"] == [
        "/opt/fleetpulse/venv/bin/fleetpulse central consolidate "
        "--config /etc/fleetpulse/central.toml"
    ]
    assert job["Type"] == ["oneshot"]
    # API and consolidation share one user and one state directory
    for key in ("User", "Group", "StateDirectory"):
        assert serve[key] == job[key], key
    assert timer["OnCalendar"] == ["hourly"]
    assert timer["Persistent"] == ["true"]
    assert timer["Unit"] == [CONSOLIDATE.name]
    assert (SYSTEMD / timer["Unit"][0]).exists()
    assert "timers.target" in timer["WantedBy"]
    assert "multi-user.target" in serve["WantedBy"]


def test_hourly_is_a_valid_calendar_spec() -> None:
    proc = analyze("calendar", "--iterations=2", directives(TIMER)["OnCalendar"][0])
    assert proc.returncode == 0, proc.stderr
    assert "*-*-* *:00:00" in proc.stdout


def test_agent_unit_environment_names_real_config_keys(tmp_path: Path) -> None:
    """The unit's FLEETPULSE_* overrides must land on real agent keys, not be ignored."""
    from agent.config import AgentConfig, load_config

    # password_file needs a username: the example config sets it, here the env does
    env = {"FLEETPULSE_GATEWAY_ID": "gw-1", "FLEETPULSE_MQTT__USERNAME": "fleetpulse-agent"}
    for assignment in directives(AGENT)["Environment"]:
        name, _, value = assignment.partition("=")
        value = value.replace("%d", "/run/credentials/fleetpulse-agent.service")
        env[name] = value.replace("%S", "/var/lib")
    cfg = load_config(None, environ=env)
    assert cfg.data_dir == Path("/var/lib/fleetpulse")
    assert cfg.mqtt.password_file == Path("/run/credentials/fleetpulse-agent.service/mqtt-password")
    if "central" in AgentConfig.model_fields:  # [central] arrives with the upload issue
        central = cfg.central  # type: ignore[attr-defined]
        assert central.token_file == Path("/run/credentials/fleetpulse-agent.service/central-token")


def test_sysusers_file_creates_the_central_user(tmp_path: Path) -> None:
    """The static user both central units name comes from the shipped sysusers.d file."""
    sysusers = shutil.which("systemd-sysusers") or "/usr/bin/systemd-sysusers"
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSTEMD / "fleetpulse.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    users = {
        line.split(":")[0]: line for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
    }
    user = directives(CENTRAL)["User"][0]
    assert user in users
    assert users[user].endswith(":/var/lib/fleetpulse-central:/usr/sbin/nologin")
    assert user in (tmp_path / "etc" / "group").read_text()
