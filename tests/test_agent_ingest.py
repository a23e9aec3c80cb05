"""Agent ingest on a real Mosquitto: mosquitto_pub, bad input, callback failures, systemd notify."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.ingest import make_client
from agent.service import Service
from schemas import KINDS, MAX_PAYLOAD_BYTES, InvalidMessage, Reading, decode
from tests.agent_support import (
    ROOT,
    AgentProcess,
    Message,
    config_of,
    count,
    integrity,
    mosquitto_pub,
    publish_all,
    query,
    subscribed,
    telemetry,
    wait_for,
    write_config,
)
from tests.brokers import Broker

T0 = 1_767_225_600_000


def test_mosquitto_pub_messages_are_stored_once_and_bad_one_quarantined(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "data" / "agent.sqlite3"
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "agent.log").start()
    try:
        wait_for("the agent to subscribe", lambda: subscribed(db), 30)
        # A client we did not write, one message per call (2.0.11's -l -q 1 drops messages).
        for seq in range(8):
            mosquitto_pub(broker.port, *telemetry("dev-1", seq, T0 + seq * 30_000))
        mosquitto_pub(broker.port, *telemetry("dev-1", 3, T0 + 3 * 30_000))  # a resend
        mosquitto_pub(broker.port, "fleet/site-a/dev-1/telemetry", b"{not json")
        mosquitto_pub(
            broker.port,
            "fleet/site-a/dev-1/status",
            b'{"device_id":"dev-1","ts":5,"state":"online"}',
        )
        wait_for(
            "9 readings and 1 quarantined",
            lambda: (count(db), count(db, "quarantine")) == (9, 1),
            30,
        )
        # `agent status` reads through its own connection while the agent runs.
        status = subprocess.run(
            [sys.executable, "-m", "fleetpulse", "agent", "status", "--json",
             "--config", str(agent.config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        figures = json.loads(status.stdout)
        assert (figures["readings_total"], figures["quarantined_total"]) == (9, 1)
        assert figures["pending_upload_rows"] == 9 and figures["subscribed_since"] is not None
        assert agent.alive()
    finally:
        assert agent.terminate() == 0, agent.log_text()[-2000:]
    assert query(db, "SELECT reason FROM quarantine") == [("payload is not a JSON object",)]
    assert query(db, "SELECT count(*) FROM readings WHERE kind = 'status' AND seq = -1") == [(1,)]
    assert integrity(db) == "ok"


# -- bad input, generated --------------------------------------------------------------

_ident = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,10}\Z")
_device = st.sampled_from(["dev-1", "dev-2", "gw.sensor:7"])


def _good_body(device: str) -> dict[str, object]:
    return {"device_id": device, "ts": T0, "seq": 1}


@st.composite
def bad_message(draw: st.DrawFn) -> Message:
    """One message that breaks DESIGN §3 in one of the ways the issue lists."""
    site, device = draw(_ident), draw(_device)
    topic = f"fleet/{site}/{device}/telemetry"
    how = draw(st.sampled_from(
        ["utf8", "json", "not_object", "types", "missing", "device", "size", "kind", "ident"]
    ))  # fmt: skip
    body = _good_body(device)
    if how == "utf8":
        return topic, b"\xff" + draw(st.binary(max_size=40))
    if how == "json":
        return topic, ("{" + draw(st.text(max_size=40))).encode("utf-8", "surrogatepass")
    if how == "not_object":
        value = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.text()))
        return topic, json.dumps(value).encode()
    if how == "types":
        field = draw(st.sampled_from(["ts", "seq", "metrics", "device_id", "lat"]))
        body[field] = draw({
            "ts": st.one_of(st.booleans(), st.lists(st.integers(), max_size=2), st.just("noon")),
            "seq": st.one_of(st.text(max_size=5), st.floats(0.5, 9.5), st.integers(max_value=-1)),
            "metrics": st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2)),
            "device_id": st.one_of(st.integers(), st.none()),
            "lat": st.one_of(st.floats(91, 1e6), st.text(min_size=1, max_size=5)),
        }[field])  # fmt: skip
        return topic, json.dumps(body).encode()
    if how == "missing":
        del body[draw(st.sampled_from(["ts", "seq", "device_id"]))]
        return topic, json.dumps(body).encode()
    if how == "device":
        body["device_id"] = device + "-other"
        return topic, json.dumps(body).encode()
    if how == "size":
        body["pad"] = "x" * draw(st.integers(MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES + 2000))
        return topic, json.dumps(body).encode()
    if how == "kind":
        kind = draw(st.from_regex(r"\A[a-z]{1,12}\Z").filter(lambda k: k not in KINDS))
        return f"fleet/{site}/{device}/{kind}", json.dumps(body).encode()
    bad_site = draw(st.sampled_from(["-lead", "has space", "x" * 70, "é"]))
    return f"fleet/{bad_site}/{device}/telemetry", json.dumps(body).encode()


def generate_bad(n: int) -> list[Message]:
    """``n`` hypothesis-generated bad messages, each checked to be refused by the contract."""
    out: list[Message] = []

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bad_message())
    def collect(message: Message) -> None:
        with pytest.raises(InvalidMessage):
            decode(message[0], message[1], 0)
        out.append(message)

    collect()
    return out[:n]


@pytest.mark.slow
def test_generated_bad_payloads_are_all_quarantined_and_agent_stays_up(
    broker: Broker, tmp_path: Path
) -> None:
    bad = generate_bad(1000)
    assert len(bad) == 1000
    db = tmp_path / "data" / "agent.sqlite3"
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "agent.log").start()
    try:
        wait_for("the agent to subscribe", lambda: subscribed(db), 30)
        publish_all(broker.port, bad)
        publish_all(broker.port, [telemetry("dev-1", 1, T0)])
        wait_for("1,000 quarantined", lambda: count(db, "quarantine") >= 1000, 60)
        wait_for("the good message after them", lambda: count(db) == 1, 30)
        time.sleep(0.3)
        assert agent.alive(), agent.log_text()[-3000:]
    finally:
        code = agent.terminate()
    assert code == 0
    assert "Traceback" not in agent.log_text()
    rows = query(db, "SELECT topic, payload, payload_bytes, reason FROM quarantine")
    assert len(rows) == 1000
    # Every message is there, bounded to 4 KiB, with its true size and a reason.
    assert Counter((t, bytes(p), n) for t, p, n, _ in rows) == Counter(
        (t, p[:4096], len(p)) for t, p in bad
    )
    assert all(r for *_, r in rows)
    assert integrity(db) == "ok"


# -- failures inside callbacks -----------------------------------------------------------


def _run_service(svc: Service) -> threading.Thread:
    thread = threading.Thread(target=svc.run, name="agent")
    thread.start()
    wait_for("the agent to subscribe", lambda: svc.subscribed, 30)
    return thread


def test_decoder_crash_quarantines_that_message_and_ingest_goes_on(
    broker: Broker, tmp_path: Path
) -> None:
    def fragile(topic: str, payload: bytes, received_ms: int) -> Reading:
        if b"boom" in payload:
            raise RuntimeError("decoder bug")
        return decode(topic, payload, received_ms)

    cfg = config_of(write_config(tmp_path, broker.port))
    svc = Service(cfg, decoder=fragile)
    thread = _run_service(svc)
    try:
        publish_all(broker.port, [
            telemetry("dev-1", 1, T0),
            ("fleet/site-a/dev-1/telemetry", b'{"boom": 1}'),
            telemetry("dev-1", 2, T0 + 30_000),
        ])  # fmt: skip
        wait_for("2 readings", lambda: count(cfg.db_path) == 2, 30)
        wait_for("1 quarantined", lambda: count(cfg.db_path, "quarantine") == 1, 30)
    finally:
        svc.stop()
        thread.join(30)
    [(reason,)] = query(cfg.db_path, "SELECT reason FROM quarantine")
    assert reason == "internal error while decoding: RuntimeError: decoder bug"


def test_paho_loop_survives_a_raising_callback(broker: Broker, tmp_path: Path) -> None:
    """The client the agent builds has paho's second guard on: a raising callback is logged."""
    cfg = config_of(write_config(tmp_path, broker.port, 'client_id = "guard-test"'))
    client = make_client(cfg)
    seen: list[bytes] = []
    subscribed_ev = threading.Event()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        seen.append(msg.payload)
        c.ack(msg.mid, msg.qos)
        if msg.payload == b"raise":
            raise RuntimeError("callback bug")

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("guard/#", 1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed_ev.set()
    client.reconnect()
    deadline = time.monotonic() + 20
    while not subscribed_ev.is_set() and time.monotonic() < deadline:
        client.loop(0.05)
    publish_all(broker.port, [("guard/a", b"raise"), ("guard/a", b"after")])
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        assert client.loop(0.05) == mqtt.MQTT_ERR_SUCCESS
    client.disconnect()
    assert seen == [b"raise", b"after"]


def test_acks_leave_after_commit_in_arrival_order(broker: Broker, tmp_path: Path) -> None:
    cfg = config_of(write_config(tmp_path, broker.port))
    order: list[int] = []
    visible: list[bool] = []

    def on_acked(readings: object, acks: list[tuple[int, int]]) -> None:
        order.extend(mid for mid, _ in acks)
        # At ack time the batch is visible to another connection: it is committed.
        visible.append(count(cfg.db_path) >= len(order))

    svc = Service(cfg, on_acked=on_acked)
    thread = _run_service(svc)
    try:
        publish_all(broker.port, [telemetry("dev-1", i, T0 + i * 30_000) for i in range(3000)])
        wait_for("3,000 readings", lambda: count(cfg.db_path) == 3000, 60)
    finally:
        svc.stop()
        thread.join(30)
    assert all(visible)
    assert len(order) == 3000
    # Mosquitto numbers our messages 1, 2, 3, … in the order it sends them.
    assert order == sorted(order)


# -- systemd notify ------------------------------------------------------------------------


def test_systemd_ready_watchdog_and_stopping(broker: Broker, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "agent.log", env)
    agent.start()
    got: list[str] = []
    try:
        while got.count("WATCHDOG=1") < 3:
            got.append(sock.recv(256).decode())
        assert agent.terminate() == 0
        while "STOPPING=1" not in got:
            got.append(sock.recv(256).decode())
    finally:
        if agent.alive():
            agent.kill()
        sock.close()
    assert "READY=1" in got
    db = tmp_path / "data" / "agent.sqlite3"
    # READY only once subscribed: the observation interval exists by then.
    assert query(db, "SELECT count(*) FROM observations") == [(1,)]


# -- protocol variants and refusals ---------------------------------------------------------


def test_mqtt311_session_queues_while_the_agent_is_away(broker: Broker, tmp_path: Path) -> None:
    cfg = config_of(write_config(tmp_path, broker.port, 'protocol = "mqttv311"'))
    svc = Service(cfg)
    thread = _run_service(svc)
    svc.stop()
    thread.join(30)
    publish_all(broker.port, [telemetry("dev-1", i, T0 + i * 30_000) for i in range(200)])
    svc = Service(cfg)
    thread = _run_service(svc)
    try:
        wait_for("the 200 queued messages", lambda: count(cfg.db_path) == 200, 30)
    finally:
        svc.stop()
        thread.join(30)
    assert query(cfg.db_path, "SELECT closed_by FROM observations") == [("shutdown",)] * 2


def test_refused_credentials_stop_the_agent_with_one_clear_line(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", extra_conf="allow_anonymous false\n").start()
    try:
        agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "agent.log").start()
        assert agent.proc is not None
        code = agent.proc.wait(30)
    finally:
        broker.kill()
    assert code == 1
    last = agent.log_text().strip().splitlines()[-1]
    assert last.startswith("fleetpulse agent run: broker 127.0.0.1:")
    assert "refused the connection" in last and "Traceback" not in agent.log_text()
