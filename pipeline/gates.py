"""Validation gates: checks on a node's value; a failure blocks everything downstream of it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import StepDefinitionError
from .steps import _GATE_ATTR

# Failed rows kept in a result (all are counted): enough to debug, bounded for big tables.
MAX_SAMPLES = 20


@dataclass(frozen=True)
class RowFailure:
    """One rejected row: its position in the value, why, and its values when they can be read."""

    row: int | None
    reason: str
    values: dict[str, Any] | None = None


@dataclass(frozen=True)
class Gate:
    """A check of node ``on``; ``fn(value)`` says which rows fail (see ``evaluate``)."""

    name: str
    on: str
    fn: Callable[[Any], Any]
    # reason attached to rows rejected by a boolean mask or a False result
    reason: str = ""
    max_samples: int = MAX_SAMPLES


@dataclass
class GateResult:
    """Outcome of one gate: counts of failed rows and a bounded sample of them."""

    gate: str
    on: str
    passed: bool
    failed_rows: int = 0
    checked_rows: int | None = None
    failures: list[RowFailure] = field(default_factory=list)
    # by reason: how many rows failed it
    reasons: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Row values may hold dates and decimals: keep the record JSON-safe.
        d["failures"] = json.loads(json.dumps(d["failures"], default=str))
        return d

    def summary(self) -> str:
        if self.passed:
            return f"gate {self.gate!r} on {self.on!r} passed"
        if self.error:
            return f"gate {self.gate!r} on {self.on!r} failed: {self.error}"
        why = "; ".join(f"{r} ({n} rows)" for r, n in self.reasons.items())
        first = self.failures[0] if self.failures else None
        example = f"; first: row {first.row} {first.values}" if first else ""
        return f"gate {self.gate!r} on {self.on!r} rejected {self.failed_rows} rows: {why}{example}"


def gate(on: str, *, name: str | None = None, reason: str = "") -> Callable[[Any], Any]:
    """Decorator: mark ``fn(value)`` as a gate on node ``on`` (picked up from modules)."""

    def mark(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        gname = name or fn.__name__
        setattr(fn, _GATE_ATTR, Gate(gname, on, fn, reason or gname))
        return fn

    return mark


def _row_values(value: Any, i: int) -> dict[str, Any] | None:
    try:
        if hasattr(value, "slice") and hasattr(value, "num_rows"):
            rows = value.slice(i, 1).to_pylist()
            return dict(rows[0]) if rows else None
        if isinstance(value, Sequence) and isinstance(value[i], Mapping):
            return dict(value[i])
    except Exception:
        return None
    return None


def _failed_positions(mask: Any) -> tuple[list[int], int]:
    """Positions where mask is False or null (null is not a pass), and the mask's length."""
    mod = type(mask).__module__
    if mod.startswith("pyarrow"):
        import pyarrow as pa
        import pyarrow.compute as pc

        ok = pc.fill_null(mask, False)
        bad = pc.indices_nonzero(pc.invert(ok))
        if isinstance(bad, pa.ChunkedArray):
            bad = bad.combine_chunks()
        return bad.to_pylist(), len(mask)
    if mod.startswith("numpy"):
        import numpy as np

        arr = np.asarray(mask)
        bad_np = np.flatnonzero(~arr.astype(bool))
        return bad_np.tolist(), int(arr.size)
    flags = list(mask)
    bad_list = [i for i, ok in enumerate(flags) if ok is not True and ok != 1]
    return bad_list, len(flags)


def _is_mask(obj: Any) -> bool:
    if isinstance(obj, str | bytes | Mapping):
        return False
    mod = type(obj).__module__
    if mod.startswith(("pyarrow", "numpy")):
        return True
    return isinstance(obj, Sequence) and all(isinstance(x, bool) or x is None for x in obj)


def evaluate(g: Gate, value: Any) -> GateResult:
    """Run a gate. ``fn(value)`` may return:

    - ``True``/``False`` (the whole value passes or fails, with the gate's reason);
    - a boolean mask, one entry per row (False or null fails the row, with the gate's reason);
    - a mapping ``reason -> mask`` to run several row checks at once;
    - an iterable of ``RowFailure`` (empty passes).
    A check that raises fails the gate with the error as reason.
    """
    res = GateResult(gate=g.name, on=g.on, passed=True)
    try:
        out = g.fn(value)
        try:
            res.checked_rows = value.num_rows if hasattr(value, "num_rows") else len(value)
        except Exception:
            res.checked_rows = None
        if isinstance(out, bool):
            if not out:
                res.passed = False
                res.reasons[g.reason or g.name] = 0
                res.failures.append(RowFailure(None, g.reason or g.name))
            return res
        masks: Mapping[str, Any]
        if isinstance(out, Mapping):
            masks = out
        elif _is_mask(out):
            masks = {g.reason or g.name: out}
        else:
            masks = {}
            failures = [f for f in out if isinstance(f, RowFailure)] if out is not None else []
            for f in failures:
                res.reasons[f.reason] = res.reasons.get(f.reason, 0) + 1
            res.failures = [
                f
                if f.values is not None or f.row is None
                else RowFailure(f.row, f.reason, _row_values(value, f.row))
                for f in failures[: g.max_samples]
            ]
            res.failed_rows = len({f.row for f in failures})
            res.passed = not failures
            return res
        failed: set[int] = set()
        for reason, mask in masks.items():
            bad, length = _failed_positions(mask)
            if res.checked_rows is not None and length != res.checked_rows:
                raise StepDefinitionError(
                    f"mask for {reason!r} has {length} entries but {g.on!r} has "
                    f"{res.checked_rows} rows; return one boolean per row"
                )
            if bad:
                res.reasons[reason] = len(bad)
                failed.update(bad)
                for i in bad[: max(0, g.max_samples - len(res.failures))]:
                    res.failures.append(RowFailure(i, reason, _row_values(value, i)))
        res.failed_rows = len(failed)
        res.passed = not res.reasons
        return res
    except Exception as exc:
        res.passed = False
        res.error = f"check raised {type(exc).__name__}: {exc}"
        return res


def as_gate(obj: Gate | Callable[[Any], Any]) -> Gate:
    """A Gate as given or the one a @gate decorator attached to a function."""
    if isinstance(obj, Gate):
        return obj
    g = getattr(obj, _GATE_ATTR, None)
    if isinstance(g, Gate):
        return g
    raise StepDefinitionError(
        f"{obj!r} is not a gate: decorate it with @gate('node') or build Gate(name, on, fn)"
    )


def gates_on(gates: Iterable[Gate], node: str) -> list[Gate]:
    """The gates checking one node."""
    return [g for g in gates if g.on == node]
