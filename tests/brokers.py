"""A private Mosquitto for tests: free port, persistence on, killable and restartable."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class Broker:
    """Mosquitto on 127.0.0.1:<free port> with its own persistence directory.

    Queue limits are set on purpose: stock Mosquitto queues 1,000 QoS 1 messages per
    offline/slow session and then drops silently, which would hide agent bugs behind
    broker loss.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        max_queued_messages: int = 1_000_000,
        max_inflight_messages: int = 1000,
        extra_conf: str = "",
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir / 'data'}/\n"
            "autosave_interval 1\n"
            f"max_queued_messages {max_queued_messages}\n"
            "max_queued_bytes 0\n"
            f"max_inflight_messages {max_inflight_messages}\n"
            "persistent_client_expiration 1d\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
            # As root, mosquitto drops to user "mosquitto", which cannot write workdir:
            # persistence and the log file would silently be off (CI runs as root).
            f"{'user root' if os.geteuid() == 0 else ''}\n" + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: the broker loses what it had not autosaved."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: the broker saves its persistence file on the way out."""
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self._stop(sig)
        # the port may take a moment to be free again
        for _ in range(100):
            try:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.05)
        self.start()
