"""B1: hypothesis-generated bad messages through a real Mosquitto into the agent process.

Every message the contract refuses must be in quarantine (one row each: quarantined =
sent), the agent must not crash or log a traceback, and good messages sent among them
must all be stored.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import InvalidMessage, decode
from tests.agent_support import (
    AgentProcess,
    Message,
    count,
    fleet_messages,
    integrity,
    query,
    subscribed,
    wait_for,
    write_config,
)
from tests.brokers import Broker
from tests.faults.figures_support import Figure, pick
from tests.faults.mqtt_support import TimedPublisher
from tests.test_agent_ingest import bad_message

_level = st.text(
    st.characters(blacklist_characters="/+#", blacklist_categories=("Cs", "Cc")), max_size=12
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def hostile_message(draw: st.DrawFn) -> Message:
    """Contract breakers (tests/test_agent_ingest.py), raw bytes, random JSON, odd topics."""
    how = draw(st.sampled_from(["contract", "bytes", "json", "topic"]))
    if how == "contract":
        return draw(bad_message())
    levels = [draw(_level) for _ in range(3)]
    topic = "fleet/" + "/".join([*levels[:2], "telemetry"])
    if how == "bytes":
        return topic, draw(st.binary(max_size=300))
    body = draw(_json)
    if how == "json":
        if isinstance(body, dict) and draw(st.booleans()):
            body = {"device_id": levels[1], "ts": 1_767_225_600_000, "seq": 1, **body}
        return topic, json.dumps(body).encode()
    depth = draw(st.integers(0, 6))
    return "fleet" + "".join("/" + draw(_level) for _ in range(depth)), json.dumps(body).encode()


def mosquitto_takes(topic: str) -> bool:
    """Mosquitto disconnects a client whose topic has control or non-characters (MQTT 1.5.4)."""
    for ch in topic:
        c = ord(ch)
        if c < 0x20 or 0x7F <= c <= 0x9F or 0xD800 <= c <= 0xDFFF or 0xFDD0 <= c <= 0xFDEF:
            return False
        if c & 0xFFFF in (0xFFFE, 0xFFFF):
            return False
    return bool(topic) and len(topic.encode()) <= 65535


def generate(n: int) -> list[Message]:
    """``n`` generated messages that MQTT can carry and the contract refuses."""
    out: list[Message] = []

    @settings(max_examples=n * 2, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(hostile_message())
    def collect(message: Message) -> None:
        topic, payload = message
        if len(out) >= n or not mosquitto_takes(topic):
            return  # the broker would refuse it: it can never reach the agent
        try:
            decode(topic, payload, 0)
        except InvalidMessage:
            out.append(message)

    collect()
    return out


def test_generated_bad_payloads_all_quarantined(
    broker: Broker, tmp_path: Path, figure: Figure
) -> None:
    n = pick(1000, 10_000)
    bad = generate(n)
    good = fleet_messages(pick(200, 1000))
    mixed = bad + good
    random.Random(1).shuffle(mixed)
    db = tmp_path / "data" / "agent.sqlite3"
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "agent.log").start()
    try:
        wait_for("the agent to subscribe", lambda: subscribed(db), 30)
        pub = TimedPublisher(broker.port, "b1-pub")
        try:
            pub.publish(mixed, rate=5000)
            pub.wait_all(timeout=120)
        finally:
            pub.close()
        wait_for("every bad message in quarantine", lambda: count(db, "quarantine") >= len(bad),
                 120, every=0.2)  # fmt: skip
        wait_for("every good message stored", lambda: count(db) >= len(good), 60, every=0.2)
        alive = agent.alive()
    finally:
        code = agent.terminate()
    log_text = agent.log_text()
    crashes = int(not alive) + int(code != 0) + log_text.count("Traceback")
    rows = query(db, "SELECT topic, payload_bytes FROM quarantine")
    quarantined = Counter((t, n) for t, n in rows)
    sent = Counter((t, len(p)) for t, p in bad)
    kinds = Counter(("oversize" if len(p) > 65536 else "other") for _, p in bad)
    figure(
        f"{len(bad):,} generated bad messages ({kinds['oversize']} over 64 KiB) among"
        f" {len(good):,} good: {len(rows):,} quarantined, {count(db):,} good stored,"
        f" {crashes} crashes/tracebacks, integrity {integrity(db)}"
    )
    assert len(bad) == n, f"hypothesis produced only {len(bad)} bad messages"
    assert crashes == 0, log_text[-3000:]
    assert quarantined == sent
    assert count(db) == len(good)
    assert integrity(db) == "ok"
