"""The agent's KPI computation against the hand-worked golden cases of tests/cases/kpi/."""

from __future__ import annotations

import pytest

from agent.kpi import KPI_SCHEMA, compute_kpis
from tests.kpi_cases import KpiCase, compare, load_cases

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(case: KpiCase) -> None:
    table = compute_kpis(case.batch, case.registry, case.days, gap_k=case.gap_k)
    assert table.schema.equals(KPI_SCHEMA)
    problems = compare(table.to_pylist(), case.expected)
    assert not problems, f"{case.name}: {case.description}\n" + "\n".join(problems)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_row_order_does_not_matter(case: KpiCase) -> None:
    reversed_batch = case.batch.take(list(range(case.batch.num_rows - 1, -1, -1)))
    a = compute_kpis(case.batch, case.registry, case.days, gap_k=case.gap_k)
    b = compute_kpis(reversed_batch, case.registry, case.days, gap_k=case.gap_k)
    assert a.equals(b)
