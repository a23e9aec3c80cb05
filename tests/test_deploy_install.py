"""deploy/install-agent.sh installs a working, agent-only venv into a temp root, idempotently."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy_support import DEPLOY, REPO

SCRIPT = "deploy/install-agent.sh"
# Installed by the central or spark extras only: the gateway must not carry them.
NOT_ON_A_GATEWAY = ("duckdb", "fastapi", "uvicorn", "ibis", "deltalake", "matplotlib", "pyspark")


def clean_checkout(dest: Path) -> Path:
    """The tracked files of this repo as they are in the working tree: what a fresh clone
    of this commit plus the uncommitted edits holds, without .venv, caches or egg-info."""
    if (REPO / ".git").exists():
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout.split(b"\0")
        for raw in filter(None, listed):
            rel = raw.decode()
            src = REPO / rel
            if src.is_file():  # a tracked file deleted in the working tree is skipped
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:
        shutil.copytree(
            REPO,
            dest,
            ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__", ".*cache"),
        )
    return dest


@dataclass
class Run:
    rc: int
    out: str
    err: str


def install(source: Path, *args: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    # the test venv's bin first would hand the script this venv's python3; use the system's
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO / ".venv"))
    )
    proc = subprocess.run(
        ["bash", str(source / SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd="/",
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def digest_tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """path → (sha256, mode, mtime_ns) of every file under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                st.st_mode,
                st.st_mtime_ns,
            )
    return out


@dataclass
class Installed:
    source: Path
    prefix: Path
    first: Run
    second: Run
    etc_before: dict[str, tuple[str, int, int]]
    etc_after: dict[str, tuple[str, int, int]]

    @property
    def venv(self) -> Path:
        return self.prefix / "opt" / "fleetpulse" / "venv"


EDIT = 'log_level = "debug"  # edited by the operator\n'


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    source = clean_checkout(base / "src")
    prefix = base / "root"
    args = ["--prefix", str(prefix), "--gateway-id", "gw-test-07", "--with-mosquitto"]
    first = install(source, *args)
    assert first.rc == 0, first.out + first.err
    config = prefix / "etc" / "fleetpulse" / "agent.toml"
    # the operator edits the config; a second run must keep it
    config.write_text(config.read_text().replace('log_level = "info"\n', EDIT))
    etc_before = digest_tree(prefix / "etc")
    second = install(source, *args[:2], "--gateway-id", "some-other-id", "--with-mosquitto")
    assert second.rc == 0, second.out + second.err
    return Installed(source, prefix, first, second, etc_before, digest_tree(prefix / "etc"))


def test_first_run_lays_out_the_gateway(installed: Installed) -> None:
    etc = installed.prefix / "etc"
    assert (installed.venv / "bin" / "fleetpulse").is_file()
    assert (etc / "systemd" / "system" / "fleetpulse-agent.service").read_bytes() == (
        DEPLOY / "systemd" / "fleetpulse-agent.service"
    ).read_bytes()
    assert (etc / "mosquitto" / "conf.d" / "fleetpulse.conf").is_file()
    assert (etc / "mosquitto" / "fleetpulse.acl").is_file()
    # secrets: root-only files; the token is empty until the gateway is registered
    for name in ("mqtt-password", "central-token"):
        assert (etc / "fleetpulse" / name).stat().st_mode & 0o777 == 0o600, name
    assert (etc / "fleetpulse" / "central-token").read_bytes() == b""
    password = (etc / "fleetpulse" / "mqtt-password").read_text().strip()
    assert len(password) >= 32
    passwd = (etc / "mosquitto" / "fleetpulse.passwd").read_text()
    assert passwd.startswith("fleetpulse-agent:") and password not in passwd
    assert "not enabling anything" in installed.first.out


def test_console_script_runs_the_agent_cli(installed: Installed) -> None:
    proc = subprocess.run(
        [str(installed.venv / "bin" / "fleetpulse"), "agent", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # the agent's commands are there, not the "unavailable: X missing" placeholder
    assert "unavailable" not in proc.stdout
    assert "run" in proc.stdout


def test_venv_holds_the_agent_extra_only(installed: Installed) -> None:
    python = installed.venv / "bin" / "python"
    code = (
        "import importlib.util, sys\n"
        "names = sys.argv[1:]\n"
        "print(' '.join(n for n in names if importlib.util.find_spec(n) is not None))\n"
    )
    present = subprocess.run(
        [str(python), "-c", code, *NOT_ON_A_GATEWAY, "paho", "pyarrow", "sqlite_utils"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert present == ["paho", "pyarrow", "sqlite_utils"]


def test_installed_config_parses_in_the_installed_venv(installed: Installed) -> None:
    config = installed.prefix / "etc" / "fleetpulse" / "agent.toml"
    code = (
        "import sys; from pathlib import Path; from agent.config import load_config\n"
        "cfg = load_config(Path(sys.argv[1]), environ={})\n"
        "print(cfg.gateway_id, cfg.log_level, cfg.mqtt.port)\n"
    )
    proc = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c", code, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # the first run's gateway id and the operator's edit both survived the second run
    assert proc.stdout.split() == ["gw-test-07", "debug", "8883"]


def test_second_run_changes_nothing(installed: Installed) -> None:
    assert installed.etc_after == installed.etc_before
    assert "created" not in installed.second.out
    assert "updated" not in installed.second.out
    assert "kept " in installed.second.out and "agent.toml" in installed.second.out


def test_a_broken_config_stops_the_install_naming_the_key(installed: Installed) -> None:
    config = installed.prefix / "etc" / "fleetpulse" / "agent.toml"
    good = config.read_text()
    try:
        config.write_text(good.replace("keepalive_s =", "keep_alive_s =", 1))
        run = install(installed.source, "--prefix", str(installed.prefix))
        assert run.rc != 0
        assert "mqtt.keep_alive_s" in run.err
        # and it stopped before touching the unit
        assert "fleetpulse-agent.service" not in run.out
    finally:
        config.write_text(good)


def test_bad_arguments_fail_before_touching_anything(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    run = install(REPO, "--prefix", str(prefix), "--gateway-id", "gw/17")
    assert run.rc != 0
    assert "gateway id 'gw/17' is invalid" in run.err
    run = install(REPO, "--prefix", str(prefix), "--source", str(tmp_path))
    assert run.rc != 0
    assert "is not a fleetpulse source tree" in run.err
    run = install(REPO, "--prefix", str(prefix), "--frobnicate")
    assert run.rc != 0 and "unknown option '--frobnicate'" in run.err
    assert list(prefix.rglob("*")) == []
