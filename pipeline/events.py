"""Lifecycle events of a run, delivered synchronously to subscribers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

EventKind = Literal[
    "pipeline_start",
    "step_start",
    "step_complete",
    "step_failed",
    "gate_failed",
    "pipeline_complete",
]
EVENT_KINDS: tuple[str, ...] = (
    "pipeline_start",
    "step_start",
    "step_complete",
    "step_failed",
    "gate_failed",
    "pipeline_complete",
)


@dataclass(frozen=True)
class Event:
    """What happened, in which run, to which step (None for pipeline-level events)."""

    kind: EventKind
    run_id: str
    pipeline: str
    step: str | None = None
    # kind-specific details: duration_s, cached, error, status, lineage, gate results ...
    data: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Event], None]


class EventBus:
    """Calls every subscriber for every event; a failing subscriber is logged, never fatal."""

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self._subscribers = list(subscribers)
        # One event at a time keeps subscribers simple; reentrant so a subscriber may subscribe.
        self._lock = threading.RLock()

    def subscribe(self, fn: Subscriber) -> None:
        """Add a subscriber for the following events."""
        with self._lock:
            self._subscribers.append(fn)

    def emit(self, event: Event) -> None:
        """Deliver one event to every subscriber in subscription order."""
        with self._lock:
            for fn in self._subscribers:
                try:
                    fn(event)
                except Exception:
                    # Metrics or logging hooks must not be able to break a data run.
                    log.exception("pipeline event subscriber %r failed on %s", fn, event.kind)
