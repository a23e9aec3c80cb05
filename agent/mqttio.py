"""A paho client with buffered socket I/O: one recv per burst of packets, one send per ack batch.

Stock paho reads a PUBLISH with three or four ``recv`` calls (command byte, length bytes,
body) after a ``select``, and writes every PUBACK with its own ``send``. At tens of
thousands of messages a second those system calls cost more than validating and storing
the message. ``BufferedClient`` keeps paho's protocol code and changes only the two
places where it touches the socket (``_sock_recv`` and ``_sock_send``, stable since paho
1.x; paho is pinned below 3 and the tests run against it):

- reads are served from a buffer filled by one large ``recv``;
- while ``corked()`` sends are appended to a buffer and leave in one ``send`` when the
  block ends (what does not fit in the socket leaves at the next ``loop_write``).

- an MQTT 5 QoS 1 PUBLISH is decoded without building its ``Properties`` object, which
  costs paho more than the rest of the packet (the agent uses no PUBLISH property); every
  other packet, and QoS 0/2, goes through paho unchanged.

The run loop drives it through paho's external-loop API (``loop_read``, ``loop_write``,
``loop_misc``) and asks ``has_buffered_input()`` before it blocks in ``select``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt

RECV_CHUNK = 256 * 1024


class BufferedClient(mqtt.Client):
    """``paho.mqtt.client.Client`` with buffered reads and corkable writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fp_rbuf = b""
        self._fp_rpos = 0
        self._fp_wbuf = bytearray()
        self._fp_cork = 0

    # -- reads ----------------------------------------------------------------------

    def has_buffered_input(self) -> bool:
        """Bytes already read from the socket that paho has not consumed yet."""
        if self._fp_rpos < len(self._fp_rbuf):
            return True
        sock = self._sock
        # TLS: decrypted bytes can wait inside the SSL object while the socket is quiet.
        pending = getattr(sock, "pending", None)
        return bool(pending is not None and pending())

    def _loop(self, timeout: float = 1.0) -> mqtt.MQTTErrorCode:
        # paho's own loop()/loop_forever() select on the socket, which knows nothing of
        # bytes already in our buffer: serve those first so they never wait for new input.
        if self._fp_rpos < len(self._fp_rbuf) and self._sock is not None:
            rc = self.loop_read()
            if rc or self._sock is None:
                return rc
            if self.want_write():
                rc = self.loop_write()
                if rc or self._sock is None:
                    return rc
            return self.loop_misc()
        return super()._loop(timeout)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._fp_rpos >= len(self._fp_rbuf):
            data = super()._sock_recv(RECV_CHUNK)  # raises BlockingIOError when empty
            if not data:
                return data  # EOF: paho treats it as a lost connection
            self._fp_rbuf, self._fp_rpos = data, 0
        start = self._fp_rpos
        end = min(start + bufsize, len(self._fp_rbuf))
        self._fp_rpos = end
        return self._fp_rbuf[start:end]

    # -- writes ---------------------------------------------------------------------

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """Hold writes made inside the block and send them together at its end."""
        self._fp_cork += 1
        try:
            yield
        finally:
            self._fp_cork -= 1
            if self._fp_cork == 0:
                with contextlib.suppress(OSError):
                    self._fp_flush()

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._fp_cork or self._fp_wbuf:
            # Behind earlier bytes (or corked): queue, so the stream keeps its order.
            self._fp_wbuf += buf
            if not self._fp_cork:
                self._fp_flush()
            return len(buf)
        return super()._sock_send(buf)

    def _fp_flush(self) -> None:
        while self._fp_wbuf and self._sock is not None:
            try:
                sent = super()._sock_send(self._fp_wbuf)
            except BlockingIOError:
                return  # the rest leaves at the next loop_write
            del self._fp_wbuf[:sent]

    def want_write(self) -> bool:
        return bool(self._fp_wbuf) or super().want_write()

    def loop_write(self) -> mqtt.MQTTErrorCode:
        # paho calls loop_write after queueing each packet; while corked, only collect.
        if self._fp_wbuf and not self._fp_cork and self._sock is not None:
            try:
                self._fp_flush()
            except OSError:
                return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
        return super().loop_write()

    # -- PUBLISH without Properties ------------------------------------------------------

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        header = self._in_packet["command"]
        if self._protocol != mqtt.MQTTv5 or (header & 0x06) != 0x02:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        # Variable header (MQTT 5 §3.3.2): topic (u16 length + bytes), packet id (u16),
        # properties (variable byte integer length + bytes); the payload is the rest.
        tlen = (packet[0] << 8) | packet[1]
        pos = 2 + tlen
        if pos + 3 > len(packet):
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        topic = bytes(packet[2:pos])
        mid = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
        plen = shift = 0
        while True:
            if pos >= len(packet) or shift > 21:
                return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
            byte = packet[pos]
            pos += 1
            plen |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        pos += plen
        if pos > len(packet):
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        message = mqtt.MQTTMessage(mid=mid, topic=topic)
        message.qos = 1
        message.dup = bool(header & 0x08)
        message.retain = bool(header & 0x01)
        message.payload = bytes(packet[pos:])
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        # manual_ack: the PUBACK is sent by the caller after its COMMIT.
        if not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- connection changes drop what belonged to the old socket ---------------------------

    def _sock_close(self) -> None:
        self._fp_rbuf, self._fp_rpos = b"", 0
        self._fp_wbuf.clear()
        super()._sock_close()
