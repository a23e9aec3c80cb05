"""The golden KPI cases of tests/cases/kpi/ through central's Ibis definition on DuckDB.

(Spark runs them too, all in one consolidation: tests/test_consolidate_spark.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest

from central.consolidate import engine as E
from central.consolidate.compute import run_dag
from central.consolidate.dag import GOLD_TABLES, KpiSettings
from central.consolidate.sources import registry_table
from tests.consolidate_support import combine_cases, with_batch_ids
from tests.kpi_cases import KpiCase, compare, load_cases

CASES = load_cases()


@pytest.fixture(scope="module")
def duckdb() -> Iterator[E.Engine]:
    eng = E.connect("duckdb")
    yield eng
    eng.close()


def device_day(eng: E.Engine, case: KpiCase, batch: pa.Table) -> pa.Table:
    rows, ledger = with_batch_ids(batch)
    res = run_dag(
        eng,
        landed=eng.register("landed", rows),
        batches=ledger,
        days=case.days,
        settings=KpiSettings(gap_k=case.gap_k),
        sources={"registry": registry_table(case.registry)},
        outputs=["device_day"],
    )
    eng.release()
    table: pa.Table = res["device_day"]
    return table


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(duckdb: E.Engine, case: KpiCase) -> None:
    got = device_day(duckdb, case, case.batch)
    problems = compare(got.to_pylist(), case.expected)
    assert not problems, f"{case.name}: {case.description}\n" + "\n".join(problems)


def test_row_order_does_not_matter(duckdb: E.Engine) -> None:
    comb = combine_cases(CASES)
    results = []
    for batch in (comb.batch, comb.batch.take(list(range(comb.batch.num_rows - 1, -1, -1)))):
        rows, ledger = with_batch_ids(batch)
        res = run_dag(
            duckdb,
            landed=duckdb.register("landed", rows),
            batches=ledger,
            days=comb.days,
            settings=KpiSettings(),
            sources={"registry": comb.registry},
        )
        results.append({n: res[n] for n in GOLD_TABLES})
        duckdb.release()
    assert not comb.problems(results[0]["device_day"])
    for name in GOLD_TABLES:
        assert results[0][name].equals(results[1][name]), name
