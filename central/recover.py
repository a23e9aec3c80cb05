"""Startup reconciliation of landing store and ledger: adopt or remove orphans, report gaps.

A crash after a batch file became durable but before its ledger row was written leaves an
orphan file. At start every file without a row is re-validated as if uploaded again: a valid
one is adopted (its row written), anything else is removed; interrupted temp files are
removed. Rows whose file is gone cannot be repaired here and are logged as errors.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.batch import BATCH_ID_RE

from .errors import CentralError, LedgerConflict, UploadRefused
from .ingest import batch_sequence
from .landing import SUFFIX, TEMP_PREFIX, LandingStore, landing_path
from .ledger import Ledger, LedgerBatch
from .validate import Limits, validate_batch

log = logging.getLogger(__name__)

_LAYOUT = re.compile(r"^gateway=([^/]+)/date=(\d{4}-\d{2}-\d{2})/([^/]+)" + re.escape(SUFFIX) + "$")


@dataclass
class Reconciliation:
    """What startup did; each list holds landing paths relative to the store root."""

    adopted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def reconcile(
    store: LandingStore, ledger: Ledger, limits: Limits, clock: Callable[[], float]
) -> Reconciliation:
    """Bring store and ledger back in step after a crash; see the module docstring."""
    report = Reconciliation()
    known = ledger.landing_paths()
    seen: set[str] = set()
    for f in store.walk():
        seen.add(f.path)
        name = f.path.rsplit("/", 1)[-1]
        if name.startswith(TEMP_PREFIX):
            store.delete(f.path)
            report.removed.append(f.path)
            log.warning("removed %s: temp file of an interrupted upload", f.path)
        elif f.path not in known:
            _orphan(store, ledger, limits, clock, f.path, f.size, report)
    for path in sorted(set(known) - seen):
        report.missing.append(path)
        log.error(
            "ledger row %s has no file at %s: restore it from a backup of the landing store",
            known[path],
            path,
        )
    log.info(
        "landing reconciliation: %d adopted, %d removed, %d missing, %d ignored",
        len(report.adopted),
        len(report.removed),
        len(report.missing),
        len(report.ignored),
    )
    return report


def _orphan(
    store: LandingStore,
    ledger: Ledger,
    limits: Limits,
    clock: Callable[[], float],
    path: str,
    size: int,
    report: Reconciliation,
) -> None:
    m = _LAYOUT.match(path)
    if not m or not BATCH_ID_RE.match(m.group(3)):
        # Not a file central writes: leave it to the operator rather than delete it.
        report.ignored.append(path)
        log.warning("ignoring %s: not in the landing layout (not written by central)", path)
        return
    gateway_id, day, batch_id = m.groups()
    seq = batch_sequence(gateway_id, batch_id)
    body = store.read(path)
    try:
        if seq is None:
            raise CentralError(f"batch id {batch_id} is not <{gateway_id}>-<sequence>")
        facts = validate_batch(body, gateway_id, limits, seq)
        now_ms = int(clock() * 1000)
        if (
            facts.min_ts_ms is not None
            and landing_path(gateway_id, batch_id, facts.min_ts_ms, now_ms) != path
        ):
            raise CentralError(f"its rows do not start on {day}")
    except (UploadRefused, CentralError) as exc:
        detail = exc.detail if isinstance(exc, UploadRefused) else str(exc)
        store.delete(path)
        report.removed.append(path)
        log.warning("removed orphan %s: not a valid batch (%s)", path, detail)
        return
    row = LedgerBatch(
        batch_id=batch_id,
        gateway_id=gateway_id,
        sha256=hashlib.sha256(body).hexdigest(),
        size_bytes=size,
        rows=facts.rows,
        min_ts_ms=facts.min_ts_ms,
        max_ts_ms=facts.max_ts_ms,
        landing_path=path,
        received_at_ms=now_ms,
    )
    try:
        ledger.record_batch(row)
    except LedgerConflict:
        winner = ledger.get_batch(batch_id)
        store.delete(path)
        report.removed.append(path)
        log.warning(
            "removed orphan %s: batch %s is already recorded at %s",
            path,
            batch_id,
            winner.landing_path if winner else "?",
        )
        return
    report.adopted.append(path)
    log.warning("adopted orphan %s: valid batch %s had no ledger row", path, batch_id)
