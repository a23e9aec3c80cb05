"""``fleetpulse agent …`` as a user runs it: help, errors on one line, status JSON."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from agent import __all__ as agent_all
from agent.buffer import Buffer
from agent.notify import Notifier
from schemas import decode
from tests.agent_support import ROOT, telemetry, write_config


def fleetpulse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("command", [["agent"], ["agent", "run"], ["agent", "status"]])
def test_help_of_each_agent_command(command: list[str]) -> None:
    out = fleetpulse(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: fleetpulse agent" in out.stdout
    if command[-1] != "agent":
        assert "--config" in out.stdout


def test_agent_commands_are_documented() -> None:
    doc = (ROOT / "docs" / "agent.md").read_text()
    for text in ("fleetpulse agent run", "fleetpulse agent status", "--json", "--config"):
        assert text in doc


def test_config_error_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1883, "prot = 5")
    out = fleetpulse("agent", "run", "--config", str(cfg))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown config key 'mqtt.prot'" in lines[0]
    assert "Traceback" not in out.stderr


def test_status_without_a_buffer_says_what_to_do(tmp_path: Path) -> None:
    out = fleetpulse("agent", "status", "--config", str(write_config(tmp_path, 1883)))
    assert out.returncode == 1
    assert "fleetpulse agent run --config PATH" in out.stderr


def test_status_json_has_the_issue_keys(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1883)
    buf = Buffer.open(tmp_path / "data" / "agent.sqlite3")
    buf.write([decode(*telemetry("dev-1", 1, 1_767_225_600_000), received_ms=0)])
    out = fleetpulse("agent", "status", "--config", str(cfg), "--json")
    buf.close()
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    for key in ("readings_total", "quarantined_total", "pending_upload_rows",
                "oldest_pending_ts", "db_bytes"):  # fmt: skip
        assert key in status
    assert status["readings_total"] == 1 and status["oldest_pending_ts"] == "2026-01-01T00:00:00Z"
    text = fleetpulse("agent", "status", "--config", str(cfg))
    assert "readings_total: 1" in text.stdout


def test_public_api_is_complete() -> None:
    import agent

    # names load on first use (agent/__init__.py): every listed one resolves, and the
    # package holds nothing else public
    public = {
        name
        for name in dir(agent)
        if not name.startswith("_") and not isinstance(getattr(agent, name), types.ModuleType)
    }
    assert public == set(agent_all)


def test_notifier_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    assert n.ready() and sock.recv(64) == b"READY=1"
    assert n.watchdog(10.0) and sock.recv(64) == b"WATCHDOG=1"
    assert not n.watchdog(10.2)  # within half the period
    assert n.watchdog(10.6)
    sock.close()
    assert not Notifier({}).ready()
    # A watchdog meant for another process is not ours to pet.
    assert (
        Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}).watchdog_s
        is None
    )
