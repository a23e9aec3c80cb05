"""Data contracts shared by agent and central: payloads, topics, batch and Avro schemas, config."""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from .messages import (
        MAX_PAYLOAD_BYTES,
        NO_SEQ,
        SKEW_LIMIT_MS,
        Event,
        InvalidMessage,
        Reading,
        Status,
        Telemetry,
        decode,
        dedup_key,
        event_time_ms,
        utc_from_ms,
    )
    from .registry import DEFAULT_GAP_K, DEFAULT_HEARTBEAT_S, Device
    from .topics import IDENT_RE, KINDS, Topic, TopicError, parse_topic, topic_for

# The agent's export worker imports ``schemas.batch`` only: eager, this package
# would load pydantic with the message models (~0.09 s) into every worker run.
# Each name is imported on first use instead (PEP 562).
_WHERE = {
    "MAX_PAYLOAD_BYTES": "messages",
    "NO_SEQ": "messages",
    "SKEW_LIMIT_MS": "messages",
    "Event": "messages",
    "InvalidMessage": "messages",
    "Reading": "messages",
    "Status": "messages",
    "Telemetry": "messages",
    "decode": "messages",
    "dedup_key": "messages",
    "event_time_ms": "messages",
    "utc_from_ms": "messages",
    "DEFAULT_GAP_K": "registry",
    "DEFAULT_HEARTBEAT_S": "registry",
    "Device": "registry",
    "IDENT_RE": "topics",
    "KINDS": "topics",
    "Topic": "topics",
    "TopicError": "topics",
    "parse_topic": "topics",
    "topic_for": "topics",
}

__all__ = [
    "DEFAULT_GAP_K",
    "DEFAULT_HEARTBEAT_S",
    "IDENT_RE",
    "KINDS",
    "MAX_PAYLOAD_BYTES",
    "NO_SEQ",
    "SKEW_LIMIT_MS",
    "Device",
    "Event",
    "InvalidMessage",
    "Reading",
    "Status",
    "Telemetry",
    "Topic",
    "TopicError",
    "decode",
    "dedup_key",
    "event_time_ms",
    "parse_topic",
    "topic_for",
    "utc_from_ms",
]


def __getattr__(name: str) -> _typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
