"""Data contracts shared by agent and central: payloads, topics, batch and Avro schemas."""

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
