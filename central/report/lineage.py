"""The run record as table rows for the report's lineage section (pure, tolerant of gaps).

The record is ``pipeline.RunRecord`` JSON (steps, gates, inputs); consolidation may add the
batches it read under ``input_batches`` or ``batches``. Missing keys show as blanks: an older
or newer record still renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Batch rows shown; the rest are counted.
MAX_BATCHES = 40


@dataclass(frozen=True)
class StepRow:
    name: str
    status: str
    rows: int | None
    columns: int | None
    duration_s: float | None
    cache: str
    note: str


@dataclass(frozen=True)
class GateRow:
    name: str
    on: str
    passed: bool
    checked_rows: int | None
    failed_rows: int
    detail: str


@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    gateway_id: str
    rows: int | None
    detail: str


@dataclass
class Lineage:
    """What the lineage section shows."""

    run_id: str
    pipeline: str
    status: str
    started_at: str
    finished_at: str
    duration_s: float | None
    steps: list[StepRow] = field(default_factory=list)
    gates: list[GateRow] = field(default_factory=list)
    inputs: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    batches: list[BatchRow] = field(default_factory=list)
    batches_total: int | None = None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _shape(d: Any) -> tuple[int | None, int | None]:
    if not isinstance(d, dict):
        return None, None
    schema = d.get("schema")
    return _int(d.get("rows")), len(schema) if isinstance(schema, dict) else None


def _step(s: dict[str, Any]) -> StepRow:
    rows, cols = _shape(s.get("output"))
    note = s.get("error") or (f"blocked by {s['blocked_by']}" if s.get("blocked_by") else "")
    return StepRow(
        str(s.get("name", "?")),
        str(s.get("status", "?")),
        rows,
        cols,
        _float(s.get("duration_s")),
        str(s.get("cache", "")),
        str(note),
    )


def _gate(g: dict[str, Any]) -> GateRow:
    reasons = g.get("reasons") or {}
    detail = g.get("error") or "; ".join(f"{r} ({n})" for r, n in dict(reasons).items())
    return GateRow(
        str(g.get("gate", "?")),
        str(g.get("on", "")),
        bool(g.get("passed")),
        _int(g.get("checked_rows")),
        _int(g.get("failed_rows")) or 0,
        str(detail),
    )


def _batch(b: Any) -> BatchRow:
    if isinstance(b, dict):
        bid = b.get("batch_id") or b.get("id") or "?"
        known = {"batch_id", "id", "gateway_id", "gateway", "rows"}
        extra = ", ".join(f"{k}={v}" for k, v in b.items() if k not in known and v is not None)
        return BatchRow(
            str(bid),
            str(b.get("gateway_id") or b.get("gateway") or ""),
            _int(b.get("rows")),
            extra[:160],
        )
    return BatchRow(str(b), "", None, "")


def _batches(record: dict[str, Any]) -> list[Any] | None:
    for key in ("input_batches", "batches"):
        value = record.get(key)
        if isinstance(value, list):
            return value
    return None


def lineage(record: dict[str, Any]) -> Lineage:
    """Rows for the steps, gates, inputs and input batches of one run record."""
    out = Lineage(
        run_id=str(record.get("run_id", "?")),
        pipeline=str(record.get("pipeline", "")),
        status=str(record.get("status", "?")),
        started_at=str(record.get("started_at") or ""),
        finished_at=str(record.get("finished_at") or ""),
        duration_s=_float(record.get("duration_s")),
    )
    out.steps = [_step(s) for s in record.get("steps") or [] if isinstance(s, dict)]
    out.gates = [_gate(g) for g in record.get("gates") or [] if isinstance(g, dict)]
    inputs = record.get("inputs") or {}
    if isinstance(inputs, dict):
        out.inputs = [(str(k), *_shape(v)) for k, v in sorted(inputs.items())]
    batches = _batches(record)
    if batches is not None:
        out.batches = [_batch(b) for b in batches[:MAX_BATCHES]]
        out.batches_total = len(batches)
    return out


def failure_of(record: dict[str, Any]) -> str:
    """One line on why a run published nothing: its failed step or gate."""
    for s in record.get("steps") or []:
        if isinstance(s, dict) and s.get("status") == "failed":
            return f"step {s.get('name')} failed: {s.get('error') or 'no message'}"
    for g in record.get("gates") or []:
        if isinstance(g, dict) and not g.get("passed", True):
            return (
                f"gate {g.get('gate')} on {g.get('on')} rejected {g.get('failed_rows', '?')} rows"
            )
    return f"status {record.get('status', '?')}"
