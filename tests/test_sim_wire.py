"""The simulator's pipelined MQTT publisher: packet encoding, and big payloads through Mosquitto."""

from __future__ import annotations

import struct
import threading
import time

import paho.mqtt.client as mqtt
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from sim.publish import pace, parse_broker_url
from sim.wire import WireClient, connect_packet, publish_packet, remaining_length
from tests.brokers import Broker


def _decode_length(data: bytes) -> tuple[int, int]:
    value, shift = 0, 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i + 1
    raise AssertionError("unterminated length")


@given(st.integers(0, 268_435_455))
def test_remaining_length_round_trips(n: int) -> None:
    encoded = remaining_length(n)
    assert 1 <= len(encoded) <= 4
    assert _decode_length(encoded) == (n, len(encoded))


@given(
    topic=st.text(min_size=1, max_size=200).filter(lambda t: "\0" not in t),
    payload=st.binary(max_size=70_000),
    mid=st.integers(1, 65535),
    retain=st.booleans(),
    dup=st.booleans(),
)
def test_publish_packet_layout(
    topic: str, payload: bytes, mid: int, retain: bool, dup: bool
) -> None:
    pkt = publish_packet(topic, payload, mid, retain, dup)
    assert pkt[0] == 0x30 | 0x02 | (0x01 if retain else 0) | (0x08 if dup else 0)
    length, used = _decode_length(pkt[1:])
    body = pkt[1 + used :]
    assert len(body) == length
    (tlen,) = struct.unpack("!H", body[:2])
    assert body[2 : 2 + tlen].decode() == topic
    assert struct.unpack("!H", body[2 + tlen : 4 + tlen]) == (mid,)
    assert body[4 + tlen :] == payload


def test_connect_packet_flags() -> None:
    pkt = connect_packet("c1", 30, "u", "p", ("fleet/s/d/status", b"{}"))
    _, used = _decode_length(pkt[1:])
    body = pkt[1 + used :]
    assert body[:7] == b"\x00\x04MQTT\x04"
    # user, password, will retain, will QoS 1, will flag, clean session
    assert body[7] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    assert struct.unpack("!H", body[8:10]) == (30,)


def test_big_and_many_payloads_arrive_intact(broker: Broker) -> None:
    got: list[tuple[str, bytes]] = []
    ready = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="wire-test-sub")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("wire/#", qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    assert ready.wait(10)
    sizes = [0, 1, 127, 128, 16_383, 16_384, 65_536, 200_000]
    sent = [(f"wire/{i}", bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    # and more messages than mids, so mids wrap around while others are in flight
    sent += [(f"wire/many/{i % 7}", str(i).encode()) for i in range(70_000)]
    client = WireClient("127.0.0.1", broker.port, "wire-test-pub", max_inflight=5000)
    client.connect()
    try:
        for topic, payload in sent:
            client.publish(topic, payload, retain=False)
        client.flush()
    finally:
        client.close()
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.disconnect()
    sub.loop_stop()
    assert sorted(got) == sorted(sent)


def test_pace_waits_for_simulated_time() -> None:
    slept: list[float] = []
    wait = pace(3600.0, 0, slept.append)  # one simulated hour per second
    wait(0)  # due now: no sleep
    wait(1_800_000)  # half an hour in: due 0.5 s after the start
    assert len(slept) == 1 and 0.45 < slept[0] <= 0.5
    assert pace(None, 0)(10**12) is None


def test_broker_url_forms() -> None:
    a = parse_broker_url("mqtt://user:p%40ss@example.org:1884")
    assert (a.host, a.port, a.username, a.password) == ("example.org", 1884, "user", "p@ss")
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
