"""A TCP proxy under the test's control: pass, blackhole, reset or slow (for R4-style partitions).

- ``blackhole``: nothing moves and nobody is told: the proxy stops reading both sides and
  holds new connections unanswered, as a dropped link does. When it ends, what was held
  flows on (TCP retransmission after a partition heals); only the peers' own timeouts end
  a connection early.
- ``reset``: every open connection is closed with a TCP RST, new ones are reset at once.
- ``slow``: bytes are forwarded at ``rate_bps`` in small chunks, each after ``delay_s``.
- ``drop_responses``: requests reach the server; the first bytes of its answer are thrown
  away and the connection is reset (the server committed, the client never hears it).

Loopback only; one thread accepts, two threads pump each connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Literal

Mode = Literal["pass", "blackhole", "reset", "slow", "drop_responses"]
_CHUNK = 1024
_POLL_S = 0.05


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class TcpProxy:
    """Listen on 127.0.0.1:<free port>, forward to ``target_port``; ``mode`` switches live."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.rate_bps = 10_000
        self.delay_s = 0.0
        self.forwarded = 0  # bytes, both directions
        self.connections = 0
        self.dropped_responses = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_S)
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def set(self, mode: Mode, rate_bps: int | None = None, delay_s: float | None = None) -> None:
        """Switch mode; ``reset`` tears down every open connection now."""
        self.rate_bps = rate_bps or self.rate_bps
        self.delay_s = self.delay_s if delay_s is None else delay_s
        self.mode = mode
        if mode == "reset":
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for a, b in pairs:
                _rst(a)
                _rst(b)

    def close(self) -> None:
        self._closed = True
        self.set("reset")
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        while self.mode == "blackhole" and not self._closed:
            time.sleep(_POLL_S)  # held unanswered, as a SYN into a dead link
        if self.mode == "reset" or self._closed:
            _rst(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _rst(client)
            return
        with self._lock:
            self._pairs.append((client, upstream))
            self.connections += 1
        for src, dst, answer in ((client, upstream, False), (upstream, client, True)):
            threading.Thread(target=self._pump, args=(src, dst, answer), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        src.settimeout(_POLL_S)
        try:
            while not self._closed:
                if self.mode == "blackhole":
                    time.sleep(_POLL_S)  # not reading: the sender's window fills, nothing flows
                    continue
                slow = self.mode == "slow"
                try:
                    data = src.recv(_CHUNK if slow else 65536)
                except TimeoutError:
                    continue
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                while self.mode == "blackhole" and not self._closed:
                    time.sleep(_POLL_S)  # read just before the switch: held, not delivered
                if answer and self.mode == "drop_responses":
                    with self._lock:
                        self.dropped_responses += 1
                    raise OSError("response dropped")  # RST both sides below
                if slow:
                    time.sleep(self.delay_s + len(data) / self.rate_bps)
                dst.sendall(data)
                self.forwarded += len(data)
        except OSError:
            _rst(src)
            _rst(dst)
