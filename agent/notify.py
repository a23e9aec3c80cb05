"""systemd notification (``Type=notify``, ``WatchdogSec=``) without a dependency.

``READY=1`` once the first subscription is acknowledged, ``WATCHDOG=1`` at half the
watchdog period while the ingest loop is healthy, ``STOPPING=1`` on the way out. Outside
systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process systemd watches; a child must not answer for it.
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._last_watchdog: float | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, state: str) -> bool:
        """Send one notification; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        addr = self.address
        # '@' is systemd's spelling of the Linux abstract namespace.
        target = "\0" + addr[1:] if addr.startswith("@") else addr
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), target)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", addr, exc)
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> bool:
        """Pet the watchdog if half its period has passed since the last time."""
        if self.watchdog_s is None:
            return False
        if self._last_watchdog is not None and now - self._last_watchdog < self.watchdog_s / 2:
            return False
        self._last_watchdog = now
        return self.send("WATCHDOG=1")
