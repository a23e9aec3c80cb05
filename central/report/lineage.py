"""A run record as rows for the report's lineage section (pure, tolerant of gaps).

Consolidation writes ``<data_dir>/runs/<run_id>.json``: run id, engine, status, message,
``inputs`` (source files with sha256, ``new_batches``), ``plan`` (mode, days), ``pipeline``
(the DAG's ``pipeline.RunRecord``: steps, gates, input shapes) and ``published`` (Delta
version per table). A bare ``RunRecord`` reads too. Missing keys show as blanks: an older or
newer record still renders.
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
    engine: str = ""
    mode: str = ""
    days: list[str] = field(default_factory=list)
    message: str = ""
    steps: list[StepRow] = field(default_factory=list)
    gates: list[GateRow] = field(default_factory=list)
    inputs: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    sources: list[tuple[str, str, str]] = field(default_factory=list)
    batches: list[BatchRow] = field(default_factory=list)
    batches_total: int | None = None
    published: list[tuple[str, int | None, int | None, str]] = field(default_factory=list)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


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
    reasons = _dict(g.get("reasons"))
    detail = g.get("error") or "; ".join(f"{r} ({n})" for r, n in reasons.items())
    return GateRow(
        str(g.get("gate", "?")),
        str(g.get("on", "")),
        bool(g.get("passed")),
        _int(g.get("checked_rows")),
        _int(g.get("failed_rows")) or 0,
        str(detail),
    )


def _short(v: Any) -> str:
    # digests identify a file by their first 16 hex digits just as well, and fit a table cell
    text = str(v)
    return (
        text[:16] + "…" if len(text) > 24 and all(c in "0123456789abcdef" for c in text) else text
    )


def _batch(b: Any) -> BatchRow:
    if isinstance(b, dict):
        bid = b.get("batch_id") or b.get("id") or "?"
        known = {"batch_id", "id", "gateway_id", "gateway", "rows"}
        extra = ", ".join(
            f"{k}={_short(v)}" for k, v in b.items() if k not in known and v is not None
        )
        return BatchRow(
            str(bid),
            str(b.get("gateway_id") or b.get("gateway") or ""),
            _int(b.get("rows")),
            extra[:160],
        )
    return BatchRow(str(b), "", None, "")


def _batches(record: dict[str, Any]) -> list[Any] | None:
    new = _dict(record.get("inputs")).get("new_batches")
    if isinstance(new, list):
        return new
    for key in ("input_batches", "batches"):
        value = record.get(key)
        if isinstance(value, list):
            return value
    return None


def _dag(record: dict[str, Any]) -> dict[str, Any]:
    # consolidation nests the DAG's RunRecord under "pipeline"; a bare RunRecord is the DAG
    nested = record.get("pipeline")
    return nested if isinstance(nested, dict) else record


def lineage(record: dict[str, Any]) -> Lineage:
    """Rows for the steps, gates, inputs, batches and published tables of one run record."""
    dag = _dag(record)
    plan = _dict(record.get("plan"))
    out = Lineage(
        run_id=str(record.get("run_id") or dag.get("run_id") or "?"),
        pipeline=str(dag.get("pipeline") or ""),
        status=str(record.get("status", "?")),
        started_at=str(record.get("started_at") or dag.get("started_at") or ""),
        finished_at=str(dag.get("finished_at") or ""),
        duration_s=_float(record.get("duration_s")),
        engine=str(record.get("engine") or ""),
        mode=str(plan.get("mode") or ""),
        days=[str(d) for d in _list(plan.get("days"))],
        message=str(record.get("message") or ""),
    )
    out.steps = [_step(s) for s in _list(dag.get("steps")) if isinstance(s, dict)]
    out.gates = [_gate(g) for g in _list(dag.get("gates")) if isinstance(g, dict)]
    out.inputs = [
        (str(k), *_shape(v))
        for k, v in sorted(_dict(dag.get("inputs")).items())
        if _shape(v) != (None, None)  # engine handles and settings are not data
    ]
    for name, src in sorted(_dict(_dict(record.get("inputs")).get("sources")).items()):
        src = _dict(src)
        out.sources.append(
            (str(name), str(src.get("path") or "(none)"), str(src.get("sha256") or ""))
        )
    batches = _batches(record)
    if batches is not None:
        out.batches = [_batch(b) for b in batches[:MAX_BATCHES]]
        out.batches_total = len(batches)
    for p in _list(record.get("published")):
        p = _dict(p)
        out.published.append(
            (
                str(p.get("table", "?")),
                _int(p.get("version")),
                _int(p.get("rows")),
                str(p.get("predicate") or "whole table"),
            )
        )
    return out


def failure_of(record: dict[str, Any]) -> str:
    """One line on why a run published nothing: its message, else its failed step or gate."""
    if record.get("status") == "running":
        return "did not finish (still running, or stopped before writing its result)"
    if record.get("message"):
        return str(record["message"])
    dag = _dag(record)
    for s in _list(dag.get("steps")):
        if isinstance(s, dict) and s.get("status") == "failed":
            return f"step {s.get('name')} failed: {s.get('error') or 'no message'}"
    for g in _list(dag.get("gates")):
        if isinstance(g, dict) and not g.get("passed", True):
            return (
                f"gate {g.get('gate')} on {g.get('on')} rejected {g.get('failed_rows', '?')} rows"
            )
    return f"status {record.get('status', '?')}"


def history_row(record: dict[str, Any]) -> tuple[str, str, str, str, int | None, int, str]:
    """One line of the run history: id, started, status, mode, new batches, days, message."""
    plan = _dict(record.get("plan"))
    batches = _batches(record)
    return (
        str(record.get("run_id", "?")),
        str(record.get("started_at", "")),
        str(record.get("status", "?")),
        str(plan.get("mode", "")),
        None if batches is None else len(batches),
        len(_list(plan.get("days"))),
        str(record.get("message", ""))[:140],
    )
