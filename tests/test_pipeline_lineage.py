"""Lineage snapshots of tables, records and opaque values; the public API is complete."""

from __future__ import annotations

import duckdb
import pyarrow as pa

import pipeline
from pipeline import describe, schema_diff


def test_describe_arrow_records_and_others() -> None:
    t = pa.table({"a": [1, 2], "b": ["x", None]})
    assert describe(t).to_dict() == {
        "type": "pyarrow.lib.Table",
        "schema": {"a": "int64", "b": "string"},
        "rows": 2,
    }
    assert describe(t.to_batches()[0]).rows == 2
    recs = describe([{"a": 1, "b": None}, {"a": 2, "b": "y"}])
    assert recs.schema == {"a": "int", "b": "str"} and recs.rows == 2
    assert describe([]).rows == 0 and describe([]).schema is None
    assert describe(42) == pipeline.Shape("int", None, None)
    assert describe("text").rows is None
    assert describe({"k": 1}).rows is None


def test_describe_duckdb_relation_without_running_a_count() -> None:
    con = duckdb.connect()
    rel = con.sql("select 1 as a, 'x' as b")
    shape = describe(rel)
    assert shape.schema is not None and list(shape.schema) == ["a", "b"]
    assert shape.rows is None  # len() would run the query


def test_schema_diff() -> None:
    assert schema_diff({"a": "int64", "b": "string"}, {"a": "double", "c": "string"}) == {
        "added": {"c": "string"},
        "removed": ["b"],
        "changed": {"a": ["int64", "double"]},
    }
    assert schema_diff(None, {"a": "x"}) is None


def test_all_is_complete_and_importable() -> None:
    public = {n for n in vars(pipeline) if not n.startswith("_")}
    modules = {"cache", "errors", "events", "gates", "graph", "lineage", "record", "run", "steps"}
    assert public - modules == set(pipeline.__all__)
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None


def test_lazy_ibis_table_gets_schema_but_no_row_count() -> None:
    import ibis

    t = ibis.memtable({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    shape = describe(t)
    assert shape.schema == {"a": "int64", "b": "string"} and shape.rows is None


def test_every_public_name_is_documented() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "pipeline.md").read_text()
    missing = [n for n in pipeline.__all__ if not re.search(rf"\b{n}\b", doc)]
    assert not missing, f"document {missing} in docs/pipeline.md"
