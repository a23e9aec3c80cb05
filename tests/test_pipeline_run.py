"""Running the DAG: order, parallelism, events, failures and the JSON run record."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline import EVENT_KINDS, Event, Pipeline, StepFailed
from tests.resources import dag_uptime_toy

RAW = [
    {"device_id": "d1", "site": "a"},
    {"device_id": "d2", "site": "b"},
    {"device_id": "d1", "site": "a"},
    {"device_id": None, "site": "a"},
]


def test_runs_in_dependency_order_and_emits_lifecycle_events() -> None:
    events: list[Event] = []
    res = Pipeline.from_modules(dag_uptime_toy).run({"raw": RAW}, subscribers=[events.append])
    assert res["total"] == 3 and res["sites"] == ["site-a", "site-b"]
    assert res.ok and res.record.status == "ok"
    kinds = [e.kind for e in events]
    assert kinds[0] == "pipeline_start" and kinds[-1] == "pipeline_complete"
    assert set(kinds) <= set(EVENT_KINDS)
    starts = [e.step for e in events if e.kind == "step_start"]
    assert starts.index("readings") < starts.index("per_device") < starts.index("total")
    complete = [e for e in events if e.kind == "step_complete"]
    assert {e.step for e in complete} == {"readings", "per_device", "total", "sites"}
    assert all(e.data["duration_s"] >= 0 for e in complete)
    assert events[-1].data["status"] == "ok" and events[-1].data["record"] is res.record
    assert len({e.run_id for e in events}) == 1


def test_failed_step_blocks_downstream_runs_independent_branch_and_raises(
    tmp_path: Path,
) -> None:
    def base(x: int) -> int:
        return x

    def boom(base: int) -> int:
        raise ValueError(f"bad value {base}")

    def after(boom: int) -> int:
        return boom

    def side(base: int) -> int:
        return base + 1

    events: list[Event] = []
    p = Pipeline([base, boom, after, side], name="t")
    with pytest.raises(StepFailed) as err:
        p.run({"x": 7}, subscribers=[events.append], record_dir=str(tmp_path), run_id="r1")
    assert err.value.step == "boom"
    assert "bad value 7" in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)
    rec = err.value.record
    assert rec is not None and rec.status == "failed"
    assert rec.step("boom").status == "failed" and "ValueError" in str(rec.step("boom").error)
    assert rec.step("after").status == "blocked" and rec.step("after").blocked_by == "step boom"
    assert rec.step("side").status == "ok"
    assert [e.step for e in events if e.kind == "step_failed"] == ["boom"]
    on_disk = json.loads((tmp_path / "r1.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["run_id"] == "r1"

    res = p.run({"x": 1}, raise_on_failure=False)
    assert not res.ok and "side" in res.outputs and "after" not in res.outputs


def test_independent_steps_run_in_parallel() -> None:
    barrier = threading.Barrier(2, timeout=5)

    # Each waits for the other: this only finishes if both run at the same time.
    def left(x: int) -> int:
        barrier.wait()
        return x + 1

    def right(x: int) -> int:
        barrier.wait()
        return x + 2

    def both(left: int, right: int) -> int:
        return left * right

    res = Pipeline([left, right, both]).run({"x": 1}, max_workers=2)
    assert res["both"] == 6


def test_parallel_run_matches_sequential_and_keeps_order() -> None:
    p = Pipeline.from_modules(dag_uptime_toy)
    seq = p.run({"raw": RAW})
    par = p.run({"raw": RAW}, max_workers=3)
    assert seq.outputs == par.outputs
    names = [s.name for s in par.record.steps]
    assert names.index("readings") < names.index("per_device") < names.index("total")


def test_broken_subscriber_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def bad(e: Event) -> None:
        raise RuntimeError("metrics down")

    res = Pipeline.from_modules(dag_uptime_toy).run({"raw": RAW}, subscribers=[bad])
    assert res["total"] == 3
    assert "subscriber" in caplog.text


def test_run_record_holds_lineage_and_is_json(tmp_path: Path) -> None:
    def table(n: int) -> pa.Table:
        return pa.table({"device_id": [f"d{i % 3}" for i in range(n)], "v": list(range(n))})

    def enriched(table: pa.Table) -> pa.Table:
        t = table.append_column("site", pa.array(["s"] * table.num_rows))
        return t.set_column(1, "v", pc.cast(t["v"], pa.float64()))

    def counts(enriched: pa.Table) -> pa.Table:
        return enriched.group_by("device_id").aggregate([("v", "count")])

    ticks = iter(range(100))
    res = Pipeline([table, enriched, counts], name="lin").run(
        {"n": 10}, record_dir=str(tmp_path), clock=lambda: float(next(ticks))
    )
    step = res.record.step("enriched")
    assert step.inputs["table"] == {
        "type": "pyarrow.lib.Table",
        "schema": {"device_id": "string", "v": "int64"},
        "rows": 10,
    }
    assert step.output == {
        "type": "pyarrow.lib.Table",
        "schema": {"device_id": "string", "v": "double", "site": "string"},
        "rows": 10,
    }
    assert step.schema_diff["table"] == {
        "added": {"site": "string"},
        "removed": [],
        "changed": {"v": ["int64", "double"]},
    }
    assert step.duration_s == 1.0  # injected clock: one tick per step
    assert res.record.step("counts").output["rows"] == 3  # type: ignore[index]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].stem == res.record.run_id
    data: dict[str, Any] = json.loads(files[0].read_text())
    assert [s["name"] for s in data["steps"]] == ["table", "enriched", "counts"]
    assert data["inputs"]["n"]["type"] == "int"
    assert not list(tmp_path.glob(".*.tmp"))


def test_parallel_speedup_on_gil_releasing_steps() -> None:
    def a(x: float) -> float:
        time.sleep(x)
        return x

    def b(x: float) -> float:
        time.sleep(x)
        return x

    t = time.perf_counter()
    Pipeline([a, b]).run({"x": 0.3}, max_workers=2)
    assert time.perf_counter() - t < 0.55
