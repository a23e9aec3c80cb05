"""Lineage snapshots: the schema and row count of a value, and the diff between two schemas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Lists of dicts may be huge; their schema is read from this many rows.
SCHEMA_SAMPLE_ROWS = 1000
# Values of these libraries are lazy queries: len() would run them, so rows stay unknown.
LAZY_MODULES = ("duckdb", "ibis", "pyspark", "polars.lazyframe")


@dataclass(frozen=True)
class Shape:
    """What a value looks like: its type, column -> type (None if not tabular), row count."""

    type: str
    schema: dict[str, str] | None
    rows: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _type_name(value: Any) -> str:
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__


def _schema_of(obj: Any) -> dict[str, str] | None:
    # pyarrow.Schema: iterable of fields with .name/.type
    names = getattr(obj, "names", None)
    types = getattr(obj, "types", None)
    if isinstance(names, list) and isinstance(types, list) and len(names) == len(types):
        return {str(n): str(t) for n, t in zip(names, types, strict=True)}
    if isinstance(obj, Mapping) or hasattr(obj, "items"):
        # ibis Schema, pandas dtypes, plain dicts
        try:
            return {str(k): str(v) for k, v in obj.items()}
        except Exception:
            return None
    return None


def _rows_of(value: Any) -> int | None:
    n = getattr(value, "num_rows", None)
    if isinstance(n, int):
        return n
    if type(value).__module__.startswith(LAZY_MODULES):
        return None
    try:
        return len(value)
    except Exception:
        # Lazy tables (ibis, Spark) refuse len() instead of running a query: no count then.
        return None


def _records_schema(rows: Sequence[Any]) -> dict[str, str] | None:
    if not rows or not all(isinstance(r, Mapping) for r in rows[:SCHEMA_SAMPLE_ROWS]):
        return None
    schema: dict[str, str] = {}
    for r in rows[:SCHEMA_SAMPLE_ROWS]:
        for k, v in r.items():
            if schema.get(k, "null") == "null":
                schema[k] = "null" if v is None else type(v).__qualname__
    return schema


def describe(value: Any) -> Shape:
    """The Shape of a pyarrow Table/RecordBatch, a list of dicts, or anything with schema/len."""
    if isinstance(value, list | tuple):
        return Shape(_type_name(value), _records_schema(value), len(value))
    schema_attr = getattr(value, "schema", None)
    if schema_attr is None and hasattr(value, "columns") and hasattr(value, "types"):
        cols, types = value.columns, value.types  # DuckDB relations
        schema_attr = {str(c): str(t) for c, t in zip(cols, types, strict=True)}
    elif schema_attr is None and hasattr(value, "dtypes") and hasattr(value, "columns"):
        schema_attr = value.dtypes  # pandas-like
    schema: dict[str, str] | None = None
    if schema_attr is not None:
        if callable(schema_attr) and not hasattr(schema_attr, "names"):
            try:
                schema_attr = schema_attr()
            except Exception:
                schema_attr = None
        schema = _schema_of(schema_attr) if schema_attr is not None else None
    rows = _rows_of(value) if schema is not None or hasattr(value, "__len__") else None
    if isinstance(value, str | bytes | Mapping):
        # len() of text or a dict is not a row count
        rows = None if schema is None else rows
    return Shape(_type_name(value), schema, rows)


def schema_diff(
    before: Mapping[str, str] | None, after: Mapping[str, str] | None
) -> dict[str, Any] | None:
    """Columns added, removed and retyped from before to after; None if one is not tabular."""
    if before is None or after is None:
        return None
    return {
        "added": {c: t for c, t in after.items() if c not in before},
        "removed": [c for c in before if c not in after],
        "changed": {
            c: [before[c], after[c]] for c in before if c in after and before[c] != after[c]
        },
    }
