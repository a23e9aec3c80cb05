"""The MQTT contract of DESIGN §3: topics, payloads, dedup key, event time."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import (
    MAX_PAYLOAD_BYTES,
    NO_SEQ,
    InvalidMessage,
    TopicError,
    decode,
    event_time_ms,
    parse_topic,
)

T = "fleet/site-a/dev-1/telemetry"


def payload(**kw: object) -> bytes:
    base: dict[str, object] = {"device_id": "dev-1", "ts": 1_700_000_000_000, "seq": 1}
    base.update(kw)
    return json.dumps(base).encode()


def test_telemetry_roundtrip() -> None:
    r = decode(T, payload(metrics={"temp": 21.5}, lat=1.0, lon=2.0, fw="1.2"), 42)
    assert (r.device_id, r.site, r.kind, r.ts_ms, r.seq) == (
        "dev-1",
        "site-a",
        "telemetry",
        1_700_000_000_000,
        1,
    )
    assert r.metrics == {"temp": 21.5} and r.fw == "1.2" and r.received_ms == 42


def test_rfc3339_with_offset_is_utc() -> None:
    r = decode(T, payload(ts="2026-01-01T01:00:00+01:00"), 0)
    assert r.ts_ms == 1_767_225_600_000


def test_status_without_seq_uses_sentinel() -> None:
    r = decode("fleet/s/dev-1/status", b'{"device_id":"dev-1","ts":5,"state":"offline"}', 0)
    assert r.state == "offline" and r.seq == NO_SEQ


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        (T, b"\xff\xfe", "not UTF-8"),
        (T, b"{not json", "not a JSON object"),
        (T, b"[1,2]", "not a JSON object"),
        (T, payload(device_id="dev-2"), "differs"),
        (T, payload(ts="2026-01-01T00:00:00"), "no UTC offset"),
        (T, payload(ts=True), "boolean"),
        (T, payload(seq="7"), "seq"),
        (T, b'{"device_id":"dev-1","ts":1}', "seq"),
        ("fleet/s/dev-1/bogus", payload(), "unknown kind"),
        ("other/s/dev-1/telemetry", payload(), "fleet/<site>"),
        (T, b" " * (MAX_PAYLOAD_BYTES + 1), "over"),
        ("fleet/s/dev-1/status", b'{"device_id":"dev-1","ts":1,"state":"maybe"}', "state"),
    ],
)
def test_bad_messages_name_the_rule(topic: str, body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as err:
        decode(topic, body, 0)
    assert reason in err.value.reason


def test_topic_grammar() -> None:
    t = parse_topic("fleet/s1/d1/event")
    assert (t.site, t.device_id, t.kind) == ("s1", "d1", "event")
    with pytest.raises(TopicError):
        parse_topic("fleet/s1/../event")


def test_skewed_clock_uses_receive_time() -> None:
    assert event_time_ms(1000 + 300_001, 1000) == (1000, True)
    assert event_time_ms(1000 + 300_000, 1000) == (301_000, False)
    assert event_time_ms(0, 10_000_000) == (0, False)


@given(st.binary(max_size=512), st.text(max_size=64))
def test_decode_never_raises_anything_but_invalid_message(body: bytes, topic: str) -> None:
    with contextlib.suppress(InvalidMessage):
        decode(topic, body, 0)
