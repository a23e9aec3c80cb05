"""The content-keyed cache: unchanged inputs are not recomputed; hits counted; stable keys."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline import CacheError, DiskCache, MemoryCache, Pipeline, fingerprint, step


def table(n: int, offset: int = 0) -> pa.Table:
    return pa.table({"id": list(range(offset, offset + n)), "v": [i * 0.5 for i in range(n)]})


def test_arrow_fingerprint_ignores_chunking_and_slicing_but_sees_content() -> None:
    t = table(1000)
    rechunked = pa.Table.from_batches(t.to_batches(max_chunksize=7))
    sliced = pa.concat_tables([table(1200).slice(0, 1000)])
    assert fingerprint(t) == fingerprint(rechunked) == fingerprint(sliced)
    changed = t.set_column(1, "v", pa.array([9.0] + [i * 0.5 for i in range(1, 1000)]))
    assert fingerprint(changed) != fingerprint(t)
    assert fingerprint(t.rename_columns(["id", "w"])) != fingerprint(t)
    assert fingerprint(t.cast(pa.schema([("id", pa.int32()), ("v", pa.float64())]))) != (
        fingerprint(t)
    )
    assert fingerprint(t.to_batches()[0]) == fingerprint(t)


def test_fingerprint_is_stable_across_processes() -> None:
    code = (
        "import pyarrow as pa; from pipeline import fingerprint;"
        "print(fingerprint([pa.table({'a': [1, 2]}), {'k': (1, 'x', None)}]))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(runs) == 1
    assert runs.pop().strip() == fingerprint([pa.table({"a": [1, 2]}), {"k": (1, "x", None)}])


def test_fingerprint_of_plain_values_and_unhashable_objects() -> None:
    @dataclass
    class P:
        a: int
        b: list[str]

    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})
    assert fingerprint(P(1, ["x"])) == fingerprint(P(1, ["x"])) != fingerprint(P(1, ["y"]))
    assert fingerprint(1) != fingerprint(1.0) != fingerprint("1")
    assert fingerprint(object()) is None
    assert fingerprint([1, object()]) is None

    class Custom:
        def __fingerprint__(self) -> str:
            return "v7"

    assert fingerprint(Custom()) == fingerprint(Custom())


def _counting_pipeline(calls: list[str]) -> Pipeline:
    def doubled(raw: pa.Table) -> pa.Table:
        calls.append("doubled")
        return raw.append_column("w", pa.array([x * 2 for x in raw["v"].to_pylist()]))

    def total(doubled: pa.Table, scale: int = 1) -> float:
        calls.append("total")
        return sum(doubled["w"].to_pylist()) * scale

    return Pipeline([doubled, total], name="cached")


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_unchanged_inputs_are_not_recomputed(kind: str, tmp_path: Path) -> None:
    cache = MemoryCache() if kind == "memory" else DiskCache(tmp_path / "cache")
    calls: list[str] = []
    p = _counting_pipeline(calls)
    first = p.run({"raw": table(100)}, cache=cache)
    assert calls == ["doubled", "total"]
    assert first.record.cache == {"hits": 0, "misses": 2}

    again = p.run(
        {"raw": pa.Table.from_batches(table(100).to_batches(max_chunksize=9))}, cache=cache
    )
    assert calls == ["doubled", "total"]  # nothing recomputed
    assert again["total"] == first["total"]
    assert again.record.cache == {"hits": 2, "misses": 0}
    assert [s.status for s in again.record.steps] == ["cached", "cached"]
    assert cache.hits == 2 and cache.misses == 2

    # a changed scalar input only recomputes the step that reads it
    p.run({"raw": table(100), "scale": 3}, cache=cache)
    assert calls == ["doubled", "total", "total"]
    # changed data recomputes both
    p.run({"raw": table(100, offset=1)}, cache=cache)
    assert calls[-2:] == ["doubled", "total"]


def test_disk_cache_survives_a_new_process_object_and_bounds_entries(tmp_path: Path) -> None:
    calls: list[str] = []
    p = _counting_pipeline(calls)
    p.run({"raw": table(10)}, cache=DiskCache(tmp_path))
    fresh = DiskCache(tmp_path)
    p.run({"raw": table(10)}, cache=fresh)
    assert calls == ["doubled", "total"] and fresh.hits == 2
    for i in range(4):
        p.run({"raw": table(10, offset=i + 1)}, cache=fresh)
    # only the latest output of each step is kept
    assert len(list((tmp_path / "doubled").glob("*.pkl"))) == 1
    assert len(list((tmp_path / "total").glob("*.pkl"))) == 1


def test_torn_cache_entry_is_a_miss_not_a_failure(tmp_path: Path) -> None:
    calls: list[str] = []
    p = _counting_pipeline(calls)
    p.run({"raw": table(10)}, cache=DiskCache(tmp_path))
    for f in tmp_path.glob("*/*.pkl"):
        f.write_bytes(b"\x80\x05garbage")
    res = p.run({"raw": table(10)}, cache=DiskCache(tmp_path))
    assert res.ok and calls == ["doubled", "total", "doubled", "total"]


def test_side_effect_steps_opt_out_and_code_changes_invalidate() -> None:
    effects: list[int] = []

    @step(cache=False)
    def export(x: int) -> int:
        effects.append(x)
        return x

    cache = MemoryCache()
    p = Pipeline([export])
    p.run({"x": 1}, cache=cache)
    res = p.run({"x": 1}, cache=cache)
    assert effects == [1, 1] and res.record.step("export").cache == "off"

    def f(x: int) -> int:
        return x + 1

    def f2(x: int) -> int:
        return x + 2

    Pipeline([step(f, name="y")]).run({"x": 1}, cache=cache)
    out = Pipeline([step(f2, name="y")]).run({"x": 1}, cache=cache)
    assert out["y"] == 3  # different code, different key


def test_unfingerprintable_input_runs_uncached() -> None:
    def size(thing: Any) -> int:
        return 1

    res = Pipeline([size]).run({"thing": object()}, cache=MemoryCache())
    assert res.record.step("size").cache == "uncacheable" and res["size"] == 1


def test_unwritable_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="writable"):
        DiskCache(blocker / "cache")


def test_a_cache_that_cannot_store_does_not_fail_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    p = _counting_pipeline(calls)
    # a file where the step's cache folder should be: every store fails with an OSError
    (tmp_path / "doubled").write_text("in the way")
    res = p.run({"raw": table(10)}, cache=DiskCache(tmp_path))
    assert res.ok and res["total"] == 45.0
    assert "output not cached" in caplog.text
