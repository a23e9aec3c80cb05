"""Take one upload: idempotency from the ledger, validation, landing write, then ledger row.

Transport-free (bytes in, outcome out) so the HTTP layer, startup recovery and tests share
it. Order is the crash-safety contract: the file is durable before its ledger row exists,
so a crash can leave a file without a row (adopted at the next start) but never a row
without its file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from .errors import Conflict, LedgerConflict
from .landing import Exists, LandingStore, landing_path
from .ledger import Ledger, LedgerBatch
from .validate import Limits, validate_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """201 (newly stored) or 200 (identical replay) and the ledger row."""

    status: int
    batch: LedgerBatch


def batch_sequence(gateway_id: str, batch_id: str) -> int | None:
    """The sequence of ``<gateway_id>-<digits>``, or None if the id has not that shape."""
    prefix = f"{gateway_id}-"
    rest = batch_id[len(prefix) :]
    if batch_id.startswith(prefix) and rest.isdigit() and rest.isascii():
        return int(rest)
    return None


class Ingest:
    """The upload use case over a landing store and a ledger."""

    def __init__(
        self, store: LandingStore, ledger: Ledger, limits: Limits, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.limits = limits
        self.clock = clock

    def replay(self, batch_id: str, sha256: str) -> Outcome | None:
        """200 if this exact batch is recorded, ``Conflict`` if other content is; else None."""
        known = self.ledger.get_batch(batch_id)
        if known is None:
            return None
        return Outcome(200, known) if known.sha256 == sha256 else _conflict(known)

    def accept(self, gateway_id: str, batch_id: str, body: bytes, sha256: str) -> Outcome:
        """Store ``body`` as ``batch_id`` of ``gateway_id`` (the id is already validated)."""
        seen = self.replay(batch_id, sha256)
        if seen is not None:
            return seen
        facts = validate_batch(body, gateway_id, self.limits, batch_sequence(gateway_id, batch_id))
        now_ms = int(self.clock() * 1000)
        rel = landing_path(gateway_id, batch_id, facts.min_ts_ms, now_ms)
        created = True
        try:
            self.store.write_once(rel, body, sha256)
        except Exists as exc:
            # Left by an upload that crashed or lost its ledger write, or one in flight now.
            if exc.sha256 != sha256:
                raise Conflict(
                    f"batch {batch_id} already landed with sha256 {exc.sha256}; batch ids "
                    "are write-once: give changed content a new sequence number",
                    "conflict",
                ) from None
            created = False
            log.info("batch %s: identical file already at %s, recording it", batch_id, rel)
        row = LedgerBatch(
            batch_id=batch_id,
            gateway_id=gateway_id,
            sha256=sha256,
            size_bytes=len(body),
            rows=facts.rows,
            min_ts_ms=facts.min_ts_ms,
            max_ts_ms=facts.max_ts_ms,
            landing_path=rel,
            received_at_ms=now_ms,
        )
        try:
            self.ledger.record_batch(row)
        except LedgerConflict:
            # A concurrent upload of the same id won the primary key.
            winner = self.ledger.get_batch(batch_id)
            if winner is None:  # pragma: no cover - a row never disappears
                raise
            if created and winner.landing_path != rel:
                self.store.delete(rel)
            return Outcome(200, winner) if winner.sha256 == sha256 else _conflict(winner)
        log.info(
            "stored batch %s of %s: %d rows, %d bytes at %s",
            batch_id,
            gateway_id,
            row.rows,
            row.size_bytes,
            rel,
        )
        return Outcome(201, row)


def _conflict(known: LedgerBatch) -> NoReturn:
    raise Conflict(
        f"batch {known.batch_id} is already stored with sha256 {known.sha256}; batch ids are "
        "write-once: give changed content a new sequence number",
        "conflict",
    )
