"""The demo's child processes: a private broker, services, and their clean shutdown.

Every child runs in its own session (a Ctrl-C in the terminal reaches only the demo, which
then stops them in order) and, on Linux, gets SIGTERM from the kernel if the demo itself
dies, so no run leaves a broker or an agent behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import SimError

log = logging.getLogger(__name__)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
PR_SET_PDEATHSIG = 1


class StageFailed(SimError):
    """A demo stage failed; ``stage`` names it and the message says what to look at."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


def wait_until(
    stage: str, what: str, pred: Callable[[], bool], timeout: float, every: float = 0.05
) -> None:
    """Poll ``pred`` until true or raise ``StageFailed`` naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise StageFailed(stage, f"timed out after {timeout:.0f} s waiting for {what}")


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux; else nothing)."""
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when the demo dies,
    # even by SIGKILL, so a killed demo leaves no broker or agent running.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A started child process with a name and a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if it was gone)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s of SIGTERM: killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            return self.proc.wait(10)


def start_child(
    name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Child:
    """Start ``argv`` with stdout and stderr into ``log_path``, in its own session."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh: IO[bytes]
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=fh,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    return Child(name, proc, log_path)


def fleetpulse_argv(*args: str) -> list[str]:
    """``python -m fleetpulse ARGS`` with this interpreter (the venv's, in the demo)."""
    return [sys.executable, "-m", "fleetpulse", *args]


def mosquitto_binary() -> str | None:
    """The mosquitto executable, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


def amqtt_available() -> bool:
    return importlib.util.find_spec("amqtt") is not None


def mosquitto_conf(workdir: Path, port: int) -> str:
    """A private Mosquitto's config: loopback only, persistence on, queues that never drop.

    The simulator publishes faster than agents drain; stock Mosquitto queues 1,000 messages
    per session and then drops silently, which would show up as a wrong uptime.
    """
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {workdir / 'data'}/\n"
        "autosave_interval 60\n"
        "max_queued_messages 10000000\n"
        "max_queued_bytes 0\n"
        "max_inflight_messages 1000\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        # as root, mosquitto drops to user "mosquitto", which cannot write the demo folder
        + ("user root\n" if os.geteuid() == 0 else "")
    )


def start_mosquitto(workdir: Path, stage: str) -> tuple[Child, int]:
    """A private Mosquitto on a free loopback port; its files under ``workdir``."""
    exe = mosquitto_binary()
    if exe is None:
        raise StageFailed(stage, "mosquitto is not installed")
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(workdir, port))
    child = start_child("mosquitto", [exe, "-c", str(conf)], workdir / "mosquitto.out")
    _await_port(child, port, stage, workdir / "mosquitto.log")
    return child, port


AMQTT_SCRIPT = """
import asyncio, sys
from amqtt.broker import Broker

async def main(port):
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        # no packet logging: it would slow a broker that is slow already
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


def start_amqtt(workdir: Path, stage: str) -> tuple[Child, int]:
    """The pure-Python amqtt broker in a child process (no offline sessions kept)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    child = start_child(
        "amqtt", [sys.executable, "-c", AMQTT_SCRIPT, str(port)], workdir / "amqtt.log"
    )
    _await_port(child, port, stage, child.log_path)
    return child, port


def _await_port(child: Child, port: int, stage: str, log_path: Path) -> None:
    wait_until(
        stage,
        f"{child.name} to listen on 127.0.0.1:{port}",
        lambda: port_open(port) or not child.alive(),
        15,
    )
    if not child.alive():
        raise StageFailed(stage, f"{child.name} exited at start; see {log_path}")
