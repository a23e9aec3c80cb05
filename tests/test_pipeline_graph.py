"""Building the DAG from names: cycles, missing inputs, duplicates and typos are named errors."""

from __future__ import annotations

import pytest

from pipeline import (
    CycleError,
    DuplicateOutputError,
    MissingInputError,
    Pipeline,
    PipelineError,
    StepDefinitionError,
    UnknownOutputError,
    step,
)
from tests.resources import dag_broken, dag_cyclic, dag_duplicate, dag_uptime_toy


def test_module_functions_become_steps_and_gates() -> None:
    p = Pipeline.from_modules(dag_uptime_toy)
    # _helper is private, `step`/`gate` are imported: neither is a node
    assert sorted(p.steps) == ["per_device", "readings", "sites", "total"]
    assert [g.name for g in p.gates] == ["counts_positive"]
    assert p.steps["per_device"].doc == "Number of readings per device."
    assert p.name == "dag_uptime_toy"


def test_cycle_names_the_steps() -> None:
    with pytest.raises(CycleError) as err:
        Pipeline.from_modules(dag_cyclic)
    cycle = err.value.cycle
    assert set(cycle) == {"a", "b", "c"} and cycle[0] == cycle[-1]
    assert "form a cycle" in str(err.value) and " -> " in str(err.value)
    assert isinstance(err.value, PipelineError)


def test_missing_input_names_step_and_suggests_fix() -> None:
    p = Pipeline.from_modules(dag_broken)
    with pytest.raises(MissingInputError) as err:
        p.run({"path": "x", "readings": [1]})
    msg = str(err.value)
    assert "'registy' (needed by kpis)" in msg
    assert "Did you mean 'registry'?" in msg
    assert "inputs=" in msg
    assert err.value.missing == {"registy": ["kpis"]}


def test_missing_input_is_raised_before_any_step_runs() -> None:
    ran: list[str] = []

    def first(x: int) -> int:
        ran.append("first")
        return x

    def second(first: int, y: int) -> int:
        return first + y

    with pytest.raises(MissingInputError):
        Pipeline([first, second]).run({"x": 1})
    assert ran == []


def test_duplicate_output_names_both_functions() -> None:
    with pytest.raises(DuplicateOutputError) as err:
        Pipeline.from_modules(dag_uptime_toy, dag_duplicate)
    msg = str(err.value)
    assert "dag_uptime_toy.readings" in msg and "dag_duplicate.readings" in msg
    assert "'readings'" in msg


def test_unknown_output_suggests_close_name() -> None:
    p = Pipeline.from_modules(dag_uptime_toy)
    with pytest.raises(UnknownOutputError) as err:
        p.run({"raw": []}, outputs=["totl"])
    assert "Did you mean 'total'?" in str(err.value)


def test_only_needed_steps_are_planned() -> None:
    p = Pipeline.from_modules(dag_uptime_toy)
    # `sites` needs only raw; `per_device` is not needed for it
    assert p.graph.plan(["sites"], {"raw"}) == ["sites"]
    order = p.graph.plan(["total"], {"raw"})
    assert order == ["readings", "per_device", "total"]


def test_provided_value_overrides_a_step() -> None:
    p = Pipeline.from_modules(dag_uptime_toy)
    res = p.run({"per_device": [{"device_id": "x", "n": 5}]}, outputs=["total"])
    assert res["total"] == 5
    assert [s.name for s in res.record.steps] == ["total"]


def test_optional_input_uses_default_or_given_value() -> None:
    p = Pipeline.from_modules(dag_uptime_toy)
    raw = [{"device_id": "d1", "site": "a"}]
    assert p.run({"raw": raw}, outputs=["sites"])["sites"] == ["site-a"]
    assert p.run({"raw": raw, "prefix": "s:"}, outputs=["sites"])["sites"] == ["s:a"]


def test_bad_step_definitions() -> None:
    def star(*args: int) -> int:
        return 0

    with pytest.raises(StepDefinitionError, match="args"):
        Pipeline([star])
    with pytest.raises(StepDefinitionError, match="does not have"):

        @step(inputs={"nope": "x"})
        def f(a: int) -> int:
            return a

    with pytest.raises(StepDefinitionError, match="name="):
        Pipeline([lambda x: x])


def test_inputs_rename_binds_parameter_to_other_node() -> None:
    @step(inputs={"values": "numbers"})
    def total(values: list[int]) -> int:
        return sum(values)

    assert Pipeline([total]).run({"numbers": [1, 2, 3]})["total"] == 6
    # the function stays a plain function
    assert total([4]) == 4
