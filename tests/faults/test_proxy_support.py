"""The fault suite's TCP proxy does what R4 needs: pass, blackhole, reset, slow, and heal."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.proxy_support import TcpProxy


@pytest.fixture
def echo() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy's RST ends it
            while data := conn.recv(65536):
                conn.sendall(data)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


@pytest.fixture
def proxy(echo: int) -> Iterator[TcpProxy]:
    p = TcpProxy(echo).start()
    yield p
    p.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_pass_blackhole_heal(proxy: TcpProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        assert roundtrip(s, b"hello") == b"hello"
        proxy.set("blackhole")
        s.settimeout(0.5)
        s.sendall(b"held")
        with pytest.raises(TimeoutError):
            s.recv(10)  # nothing comes back and nothing says why
        proxy.set("pass")
        s.settimeout(5)
        assert s.recv(10) == b"held"  # the partition healed: what was held flows on


def test_blackhole_holds_new_connections(proxy: TcpProxy) -> None:
    proxy.set("blackhole")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.settimeout(0.5)
        s.sendall(b"x")
        with pytest.raises(TimeoutError):
            s.recv(1)
        proxy.set("pass")
        s.settimeout(5)
        assert s.recv(1) == b"x"


def test_reset_tears_connections_down(proxy: TcpProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        assert roundtrip(s, b"a") == b"a"
        proxy.set("reset")
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(50):
                s.sendall(b"b")
                if not s.recv(1):
                    raise ConnectionResetError("closed")
                time.sleep(0.02)
    # A new connection is reset at once (possibly before connect() even returns).
    with (
        pytest.raises((ConnectionResetError, BrokenPipeError)),
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s,
    ):
        s.sendall(b"c")
        if not s.recv(1):
            raise ConnectionResetError("closed")


def test_slow_limits_the_rate(proxy: TcpProxy) -> None:
    proxy.set("slow", rate_bps=20_000, delay_s=0.0)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        started = time.monotonic()
        assert roundtrip(s, b"z" * 10_000) == b"z" * 10_000
        elapsed = time.monotonic() - started
    # 10 kB at 20 kB/s each way (the two ways overlap): ~0.5 s; unthrottled: milliseconds.
    assert elapsed >= 0.45, elapsed
