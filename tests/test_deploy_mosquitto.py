"""The shipped gateway broker config (deploy/mosquitto/) enforces TLS, passwords and the ACL."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_support import (
    GatewayBroker,
    Pki,
    connected,
    disconnect_with_will,
    make_pki,
    mqtt_client,
)

AGENT, AGENT_PW = "fleetpulse-agent", "agent-secret"
USERS = {AGENT: AGENT_PW, "dev-a": "secret-a", "dev-b": "secret-b"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def gw(tmp_path: Path, pki: Pki) -> Iterator[GatewayBroker]:
    broker = GatewayBroker(tmp_path / "mosquitto", pki, USERS).start()
    try:
        yield broker
    finally:
        broker.stop()


def site() -> str:
    # A unique site per test: retained messages or sessions of one test never reach another.
    return f"site-{uuid.uuid4().hex[:8]}"


def test_anonymous_client_is_refused(gw: GatewayBroker) -> None:
    with connected(gw.port, "anon", ca=gw.pki.ca) as (_, out):
        assert out.connected.wait(10)
        assert out.connack is not None and out.connack.getName() == "Not authorized"


def test_wrong_password_is_refused(gw: GatewayBroker) -> None:
    with connected(gw.port, "dev-a", username="dev-a", password="secret-b", ca=gw.pki.ca) as (
        _,
        out,
    ):
        assert out.connected.wait(10)
        assert out.connack is not None and out.connack.is_failure
    # the same device with its own password gets in: the refusal was the password
    with connected(gw.port, "dev-a", username="dev-a", password="secret-a", ca=gw.pki.ca) as (
        _,
        out,
    ):
        assert out.connected.wait(10)
        assert out.connack is not None and not out.connack.is_failure


def test_plain_text_mqtt_gets_no_session(gw: GatewayBroker) -> None:
    """The only listener speaks TLS: a plain MQTT CONNECT never gets a CONNACK."""
    with connected(gw.port, "plain", username=AGENT, password=AGENT_PW) as (_, out):
        assert not out.connected.wait(3)
        assert out.connack is None


def test_broker_certificate_from_another_ca_is_rejected(gw: GatewayBroker, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", name="other")
    with pytest.raises(ssl.SSLCertVerificationError):
        mqtt_client(gw.port, "agent", username=AGENT, password=AGENT_PW, ca=other.ca)


def test_device_cannot_publish_as_another_device(gw: GatewayBroker) -> None:
    s = site()
    with (
        connected(gw.port, "agent", username=AGENT, password=AGENT_PW, ca=gw.pki.ca) as (ac, ao),
        connected(gw.port, "dev-b", username="dev-b", password="secret-b", ca=gw.pki.ca) as (
            bc,
            bo,
        ),
    ):
        assert ao.connected.wait(10) and bo.connected.wait(10)
        ac.subscribe("fleet/#", qos=1)
        assert ao.subscribed.wait(10)
        forged = bc.publish(f"fleet/{s}/dev-a/telemetry", b"forged", qos=1)
        forged.wait_for_publish(10)
        own = bc.publish(f"fleet/{s}/dev-b/telemetry", b"own", qos=1)
        own.wait_for_publish(10)
        # QoS 1 from one publisher reaches a subscriber in order: once "own" is here,
        # "forged" would have arrived before it if the broker had let it through.
        assert ao.wait_for(f"fleet/{s}/dev-b/telemetry", b"own")
        assert (f"fleet/{s}/dev-a/telemetry", b"forged") not in ao.messages
        # MQTT 5 tells the device why (its PUBACK), MQTT 3.1.1 devices are just ignored
        assert bo.pubacks[forged.mid].getName() == "Not authorized"
        assert not bo.pubacks[own.mid].is_failure


def test_device_subscribing_to_fleet_receives_nothing_of_others(gw: GatewayBroker) -> None:
    """Mosquitto 2.0 grants the SUBACK and applies the read ACL to each message instead."""
    s = site()
    with (
        connected(gw.port, "agent", username=AGENT, password=AGENT_PW, ca=gw.pki.ca) as (ac, ao),
        connected(gw.port, "dev-a", username="dev-a", password="secret-a", ca=gw.pki.ca) as (
            spy,
            so,
        ),
        connected(gw.port, "dev-b", username="dev-b", password="secret-b", ca=gw.pki.ca) as (
            bc,
            bo,
        ),
    ):
        assert ao.connected.wait(10) and so.connected.wait(10) and bo.connected.wait(10)
        ac.subscribe("fleet/#", qos=1)
        spy.subscribe("fleet/#", qos=1)
        assert ao.subscribed.wait(10) and so.subscribed.wait(10)
        for i in range(20):
            bc.publish(f"fleet/{s}/dev-b/telemetry", f"m{i}".encode(), qos=1).wait_for_publish(10)
        assert ao.wait_for(f"fleet/{s}/dev-b/telemetry", b"m19")
        assert len([m for m in ao.messages if m[0].startswith(f"fleet/{s}/")]) == 20
        # a second SUBACK on the spy's own connection comes after anything the broker had
        # already sent it (one TCP stream): nothing can still be in flight to the spy
        so.subscribed.clear()
        spy.subscribe("spy/nothing", qos=1)
        assert so.subscribed.wait(10)
        assert len(so.subacks) == 2
        assert so.messages == []


def test_agent_over_tls_receives_devices_and_their_last_will(gw: GatewayBroker) -> None:
    s = site()
    with connected(gw.port, "agent", username=AGENT, password=AGENT_PW, ca=gw.pki.ca) as (
        ac,
        ao,
    ):
        assert ao.connected.wait(10) and not ao.connack.is_failure  # type: ignore[union-attr]
        ac.subscribe("fleet/#", qos=1)
        assert ao.subscribed.wait(10)
        assert not ao.subacks[0][0].is_failure
        # dev-a sets its LWT on its own status topic, dev-b (rogue) on dev-a's
        dev, do = mqtt_client(
            gw.port,
            "dev-a",
            username="dev-a",
            password="secret-a",
            ca=gw.pki.ca,
            will_topic=f"fleet/{s}/dev-a/status",
        )
        rogue, ro = mqtt_client(
            gw.port,
            "dev-b",
            username="dev-b",
            password="secret-b",
            ca=gw.pki.ca,
            will_topic=f"fleet/{s}/dev-a/status",
        )
        assert do.connected.wait(10) and ro.connected.wait(10)
        dev.publish(f"fleet/{s}/dev-a/status", b'{"state":"online"}', qos=1, retain=True)
        dev.publish(f"fleet/{s}/dev-a/telemetry", b"t1", qos=1).wait_for_publish(10)
        assert ao.wait_for(f"fleet/{s}/dev-a/telemetry", b"t1")
        disconnect_with_will(rogue)
        disconnect_with_will(dev)
        assert ao.wait_for(f"fleet/{s}/dev-a/status", b'{"state":"offline"}')
        wills = [m for m in ao.messages if m == (f"fleet/{s}/dev-a/status", b'{"state":"offline"}')]
        # the rogue's will on dev-a's topic was dropped: exactly one offline, dev-a's own
        assert len(wills) == 1


def test_agent_session_survives_broker_restart_beyond_stock_queue_limit(
    gw: GatewayBroker,
) -> None:
    """Persistence on and max_queued_messages raised: 2,500 queued QoS 1 messages (stock
    Mosquitto keeps 1,000 and silently drops the rest) survive a broker restart."""
    s = site()
    n = 2500
    with connected(
        gw.port, "fleetpulse-gw1", username=AGENT, password=AGENT_PW, ca=gw.pki.ca,
        session_expiry=3600,
    ) as (ac, ao):  # fmt: skip
        assert ao.connected.wait(10)
        ac.subscribe("fleet/#", qos=1)
        assert ao.subscribed.wait(10)
    # the agent is away; its persistent session queues
    with connected(gw.port, "dev-a", username="dev-a", password="secret-a", ca=gw.pki.ca) as (
        dc,
        do,
    ):
        assert do.connected.wait(10)
        infos = [dc.publish(f"fleet/{s}/dev-a/telemetry", b"%d" % i, qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(30)
    gw.stop()  # SIGTERM: Mosquitto writes its persistence file on the way out
    gw.start()
    with connected(
        gw.port, "fleetpulse-gw1", username=AGENT, password=AGENT_PW, ca=gw.pki.ca,
        session_expiry=3600,
    ) as (_, ao):  # fmt: skip
        assert ao.connected.wait(10)
        assert ao.wait_for(f"fleet/{s}/dev-a/telemetry", b"%d" % (n - 1), timeout=60)
        got = [p for t, p in ao.messages if t == f"fleet/{s}/dev-a/telemetry"]
        assert got == [b"%d" % i for i in range(n)]
