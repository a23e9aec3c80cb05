"""Topic grammar of DESIGN §3: ``fleet/<site>/<device_id>/<kind>``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

Kind = Literal["telemetry", "status", "event"]
KINDS: tuple[str, ...] = get_args(Kind)

TOPIC_ROOT = "fleet"
# Identifiers travel in topics, file names and SQL: keep them to a safe alphabet.
IDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class TopicError(ValueError):
    """The topic does not follow fleet/<site>/<device_id>/<kind>."""


@dataclass(frozen=True, slots=True)
class Topic:
    site: str
    device_id: str
    kind: str


def parse_topic(topic: str) -> Topic:
    """Split a topic into site, device and kind, or raise TopicError naming the bad part."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT:
        raise TopicError(f"topic {topic!r} is not fleet/<site>/<device_id>/<kind>")
    _, site, device_id, kind = parts
    if not IDENT_RE.match(site):
        raise TopicError(f"site {site!r} in topic {topic!r} is not a valid identifier")
    if not IDENT_RE.match(device_id):
        raise TopicError(f"device_id {device_id!r} in topic {topic!r} is not a valid identifier")
    if kind not in KINDS:
        raise TopicError(f"unknown kind {kind!r} in topic {topic!r}; expected one of {KINDS}")
    return Topic(site, device_id, kind)


def topic_for(site: str, device_id: str, kind: str) -> str:
    """The topic a device publishes a message of ``kind`` on."""
    return f"{TOPIC_ROOT}/{site}/{device_id}/{kind}"
