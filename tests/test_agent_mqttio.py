"""BufferedClient on a real Mosquitto: the fast PUBLISH path keeps topic, payload, flags, order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqttio import RECV_CHUNK, BufferedClient
from tests.brokers import Broker


def _v5(client_id: str, cls: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    return cls(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )


def test_publish_with_properties_big_payloads_and_every_qos(broker: Broker, tmp_path: Path) -> None:
    sub = _v5("buffered-sub", BufferedClient)
    got: list[tuple[str, bytes, int, bool]] = []
    ready = threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("io/#", 2)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos, m.retain))
    sub.connect("127.0.0.1", broker.port)
    deadline = time.monotonic() + 10
    while not ready.is_set() and time.monotonic() < deadline:
        sub.loop(0.05)

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v" * 300)]
    props.ContentType = "application/json"
    props.MessageExpiryInterval = 600
    big = bytes(range(256)) * (RECV_CHUNK // 256 + 40)  # spans several reads
    sent = [("io/a", b"one", 1), ("io/b", big, 1), ("io/c", b"zero", 0), ("io/d", b"two", 2)]
    sent += [(f"io/n/{i}", str(i).encode(), 1) for i in range(200)]
    pub = _v5("buffered-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    infos = [pub.publish(t, p, qos=q, properties=props) for t, p, q in sent]
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()

    deadline = time.monotonic() + 20
    while len(got) < len(sent) and time.monotonic() < deadline:
        assert sub.loop(0.05) == mqtt.MQTT_ERR_SUCCESS
    sub.disconnect()
    # QoS 2 is handed over only after its PUBREL, so compare order within each QoS.
    for qos in (0, 1, 2):
        assert [(t, p) for t, p, q, _ in got if q == qos] == [
            (t, p) for t, p, q in sent if q == qos
        ]
    assert len(got) == len(sent)
    assert not any(r for *_, r in got)
