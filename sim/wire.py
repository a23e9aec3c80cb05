"""A pipelined MQTT 3.1.1 QoS 1 publisher on a plain socket, and the one-shot will connection.

Why not paho for the bulk: paho writes every PUBLISH with its own ``send`` and builds
several objects per PUBACK; on the shared 2-core machine paho published 5-8k msg/s where
this client publishes 30k+ (BENCHMARKS.md), and Mosquitto takes 50k+ msg/s from one
connection. A load generator slower than the system under test measures itself, so the
default publisher packs many PUBLISH packets into one write and reads PUBACKs as they come.
It implements only what a publisher needs: CONNECT/CONNACK, PUBLISH (QoS 1) / PUBACK,
PINGREQ/PINGRESP, DISCONNECT; on a lost connection it reconnects and resends every
unacknowledged message with DUP set (what paho does for QoS 1 too). paho stays available
(``--client paho``) and the tests receive with it.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time

from .errors import BrokerError

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
PINGREQ, PINGRESP, DISCONNECT = 0xC0, 0xD0, 0xE0
QOS1, DUP, RETAIN = 0x02, 0x08, 0x01
CONNACK_TEXT = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
WRITE_CHUNK = 64 * 1024


def utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (1-4 bytes, 7 bits each)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str,
    keepalive: int = 60,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """CONNECT, clean session; a will (topic, payload) is sent retained at QoS 1."""
    flags = 0x02
    payload = utf8(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
        payload += utf8(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
        if password is not None:
            flags |= 0x40
            payload += utf8(password)
    body = utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return bytes([CONNECT]) + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, mid: int, retain: bool, dup: bool = False) -> bytes:
    head = PUBLISH | QOS1 | (RETAIN if retain else 0) | (DUP if dup else 0)
    var = utf8(topic) + struct.pack("!H", mid)
    return bytes([head]) + remaining_length(len(var) + len(payload)) + var + payload


def _open(host: str, port: int, packet: bytes, url: str, timeout: float = 10.0) -> socket.socket:
    """Connect, send CONNECT, check CONNACK; the socket is returned blocking."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise BrokerError(
            f"cannot connect to the broker at {url}: {exc.strerror or exc}; is it running? "
            "(give it with --broker mqtt://HOST:PORT)"
        ) from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(packet)
        ack = b""
        while len(ack) < 4:
            chunk = sock.recv(4 - len(ack))
            if not chunk:
                raise ConnectionResetError("the broker closed the connection before CONNACK")
            ack += chunk
    except OSError as exc:
        sock.close()
        raise BrokerError(f"no CONNACK from the broker at {url}: {exc}") from exc
    if ack[0] != CONNACK or ack[3] != 0:
        sock.close()
        text = CONNACK_TEXT.get(ack[3], "unknown reason")
        raise BrokerError(f"the broker at {url} refused the connection: [code:{ack[3]}] {text}")
    return sock


def send_will(
    host: str,
    port: int,
    client_id: str,
    topic: str,
    payload: bytes,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """Connect with ``payload`` as the will, then reset the connection so the broker sends it.

    SO_LINGER 0 makes close() send RST: no DISCONNECT (so the will fires at once) and no
    TIME_WAIT (so thousands of simulated crashes do not exhaust local ports).
    """
    url = f"mqtt://{host}:{port}"
    sock = _open(
        host, port, connect_packet(client_id, 60, username, password, (topic, payload)), url
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


class WireClient:
    """Pipelined QoS 1 publishing over one connection; ``publish`` never waits for a PUBACK
    unless ``max_inflight`` messages are outstanding."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        max_inflight: int = 20_000,
        ack_timeout_s: float = 60.0,
    ) -> None:
        self.host, self.port = host, port
        self.url = f"mqtt://{host}:{port}"
        self._connect = connect_packet(client_id, keepalive, username, password)
        self.keepalive = keepalive
        self.max_inflight = min(max_inflight, 60_000)
        self.ack_timeout_s = ack_timeout_s
        self._sock: socket.socket | None = None
        self._out = bytearray()
        self._in = bytearray()
        self._inflight: dict[int, tuple[str, bytes, bool]] = {}
        self._next_mid = 1
        self._last_send = self._last_ack = time.monotonic()
        self.reconnects = 0
        # the broker acks QoS 1 in the order it received (MQTT 3.1.1 §4.6), so "acked >= n"
        # means the first n messages have reached it
        self.published = 0
        self.acked = 0

    def connect(self) -> None:
        self._sock = _open(self.host, self.port, self._connect, self.url)
        self._sock.setblocking(False)
        self._last_send = self._last_ack = time.monotonic()

    def _mid(self) -> int:
        mid = self._next_mid
        while mid in self._inflight:
            mid = mid % 65535 + 1
        self._next_mid = mid % 65535 + 1
        return mid

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if len(self._inflight) >= self.max_inflight:
            self._send_out()
            self._wait_acks(self.max_inflight // 2)
        mid = self._mid()
        self._inflight[mid] = (topic, payload, retain)
        self.published += 1
        self._out += publish_packet(topic, payload, mid, retain)
        if len(self._out) >= WRITE_CHUNK:
            self._send_out()
            self._read_acks()

    def _send_out(self) -> None:
        """Write the buffer (the socket is non-blocking: wait for room, reading acks meanwhile)."""
        while self._out:
            try:
                sent = self._require_sock().send(self._out)
                del self._out[:sent]
            except BlockingIOError:
                self._read_acks(wait=0.05)
            except OSError as exc:
                self._recover(exc)
        self._last_send = time.monotonic()

    def _require_sock(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionResetError("not connected")
        return self._sock

    def _read_acks(self, wait: float = 0.0) -> None:
        sock = self._require_sock()
        if wait:
            select.select([sock], [], [], wait)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("the broker closed the connection")
                self._in += chunk
                if len(chunk) < 65536:
                    break
        except BlockingIOError:
            pass
        except OSError as exc:
            self._recover(exc)
            return
        self._parse()

    def _parse(self) -> None:
        buf, pos = self._in, 0
        while len(buf) - pos >= 2:
            head = buf[pos]
            length, shift, i = 0, 0, pos + 1
            while True:
                if i >= len(buf):
                    del buf[:pos]
                    return
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) - i < length:
                break
            kind = head & 0xF0
            if kind == PUBACK:
                mid = (buf[i] << 8) | buf[i + 1]
                if self._inflight.pop(mid, None) is not None:
                    self._last_ack = time.monotonic()
                    self.acked += 1
            elif kind != PINGRESP:
                raise BrokerError(f"unexpected MQTT packet type 0x{head:02x} from {self.url}")
            pos = i + length
        del buf[:pos]

    def _wait_acks(self, limit: int) -> None:
        while len(self._inflight) > limit:
            if self._out:
                self._send_out()
            self._read_acks(wait=0.1)
            stalled = time.monotonic() - self._last_ack
            if len(self._inflight) > limit and stalled > self.ack_timeout_s:
                raise BrokerError(
                    f"the broker at {self.url} acknowledged nothing for {stalled:.0f} s "
                    f"with {len(self._inflight)} messages outstanding"
                )
            if time.monotonic() - self._last_send > self.keepalive / 2:
                self._ping()

    def _ping(self) -> None:
        self._out += bytes([PINGREQ, 0])
        self._send_out()

    def _recover(self, exc: BaseException) -> None:
        """Reconnect and resend every unacknowledged message with DUP set."""
        log.warning("lost the broker at %s (%s); reconnecting", self.url, exc)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._in.clear()
        deadline = time.monotonic() + self.ack_timeout_s
        delay = 0.2
        while True:
            try:
                self.connect()
                break
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(5.0, delay * 2)
        self.reconnects += 1
        # what was buffered is all in _inflight (a lost PINGREQ does not matter)
        self._out = bytearray()
        for mid, (topic, payload, retain) in self._inflight.items():
            self._out += publish_packet(topic, payload, mid, retain, dup=True)

    def idle(self, seconds: float) -> None:
        """Send what is buffered, then wait ``seconds`` reading acks and keeping the link alive."""
        self._send_out()
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._read_acks(wait=min(left, 1.0))
            if self._out:
                self._send_out()
            if time.monotonic() - self._last_send > self.keepalive / 2:
                self._ping()

    def flush(self) -> None:
        """Send everything and wait until all of it is acknowledged."""
        self._send_out()
        self._wait_acks(0)

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.setblocking(True)
            self._sock.sendall(bytes([DISCONNECT, 0]))
        except OSError:
            pass
        finally:
            self._sock.close()
            self._sock = None
