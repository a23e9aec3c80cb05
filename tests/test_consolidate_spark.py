"""One definition, two engines: the golden KPI cases and every gold table on Spark vs DuckDB.

All Spark work of the suite lives in this module so that it starts one Spark session
(``spark`` fixture, session scope) and computes the shared input once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from central.consolidate import engine as E
from central.consolidate.compute import run_dag
from central.consolidate.dag import GOLD_TABLES, KpiSettings
from central.consolidate.publish import publish
from tests.consolidate_support import (
    Combined,
    Fleet,
    combine_cases,
    make_fleet,
    spark,  # noqa: F401  (the session fixture)
    with_batch_ids,
)
from tests.kpi_cases import load_cases

pytestmark = pytest.mark.spark
TOL = 1e-9
KEYS = {
    "device_day": ["day", "device_id"],
    "device_firmware_day": ["day", "device_id", "firmware_version"],
    "fleet_day": ["day"],
    "firmware_day": ["day", "firmware_version"],
    "site_day": ["day", "site"],
    "geo_day": ["day", "geohash5"],
    "quarantine": ["day", "source", "batch_id", "ts", "device_id", "kind", "seq"],
    "agent_device_day": ["gateway_id", "day", "device_id"],
}


def _kpi_rows(fleet: Fleet, up_s: float, computed_ms: int) -> pa.Table:
    """Agent KPI rows (schema v2) of every gateway for a few of its devices and every day."""
    from datetime import UTC, datetime

    b = fleet.batch
    pairs = sorted(
        set(zip(b["gateway_id"].to_pylist(), b["device_id"].to_pylist(), strict=True))
        - {(g, None) for g in b["gateway_id"].to_pylist()}
    )
    rows = []
    for g, d in pairs[::3]:
        for day in fleet.days:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            rows.append({
                "record_type": "kpi", "gateway_id": g, "device_id": d, "site": "site-0",
                "ts": start, "day": day, "eligible_s": 86_400.0, "up_s": up_s,
                "down_s": 86_400.0 - up_s, "unknown_s": 0.0, "device_uptime": up_s / 86_400.0,
                "connectivity_ratio": None if d.endswith("3") else 0.75, "slots_counted": 2,
                "slots_holding": 1,
                "computed_at": datetime.fromtimestamp(computed_ms / 1000, UTC),
            })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=fleet.batch.schema)


def _inputs() -> tuple[Combined, Fleet, dict[str, Any]]:
    comb = combine_cases(load_cases())
    fleet = make_fleet(n_devices=20, hours=30, n_gateways=3, seed=5)
    # one bad row so that quarantine has content on both engines
    bad = fleet.batch.slice(0, 1).to_pylist()[0] | {"kind": "metric"}
    # agent KPI rows: a first version in each gateway's batch 1, a newer one in its batch 2
    # (whose clock says earlier): agent_device_day must take batch 2's on both engines
    first = _kpi_rows(fleet, 600.0, 1_767_300_000_000)
    batch = pa.concat_tables(
        [comb.batch, fleet.batch, pa.Table.from_pylist([bad], schema=fleet.batch.schema), first]
    )
    rows, ledger = with_batch_ids(batch)
    newer, newer_ledger = with_batch_ids(_kpi_rows(fleet, 900.0, 1_767_200_000_000))
    ids = pc.replace_substring(newer["batch_id"], "-0000000001", "-0000000002")
    newer = newer.set_column(newer.schema.get_field_index("batch_id"), "batch_id", ids)
    newer_ledger = newer_ledger.set_column(
        0, "batch_id", pc.replace_substring(newer_ledger["batch_id"], "-0000000001", "-0000000002")
    )
    rows = pa.concat_tables([rows, newer])
    ledger = pa.concat_tables([ledger, newer_ledger])
    return (
        comb,
        fleet,
        {
            "rows": rows,
            "ledger": ledger,
            "days": sorted(set(comb.days) | set(fleet.days)),
            "sources": {
                "registry": pa.concat_tables([comb.registry, fleet.registry]),
                "firmware": fleet.firmware,
                "alerts": fleet.alerts,
            },
        },
    )


def _run(engine: E.Engine, inputs: dict[str, Any]) -> dict[str, pa.Table]:
    res = run_dag(
        engine,
        landed=engine.register("landed", inputs["rows"]),
        batches=inputs["ledger"],
        days=inputs["days"],
        settings=KpiSettings(),
        sources=inputs["sources"],
    )
    return {n: res[n] for n in GOLD_TABLES}


@pytest.fixture(scope="module")
def results(spark: Any) -> Iterator[tuple[Combined, dict[str, pa.Table], dict[str, pa.Table]]]:  # noqa: F811
    comb, _fleet, inputs = _inputs()
    duck = E.connect("duckdb")
    try:
        on_duckdb = _run(duck, inputs)
    finally:
        duck.close()
    sp = E.connect("spark", spark=spark)
    try:
        on_spark = _run(sp, inputs)
    finally:
        sp.close()
    yield comb, on_duckdb, on_spark


def test_golden_cases_pass_on_spark(results: Any) -> None:
    comb, _duck, on_spark = results
    problems = comb.problems(on_spark["device_day"])
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())


def test_golden_cases_pass_on_duckdb_in_one_run(results: Any) -> None:
    comb, on_duckdb, _spark = results
    assert not comb.problems(on_duckdb["device_day"])


@pytest.mark.parametrize("name", GOLD_TABLES)
def test_every_gold_table_is_the_same_on_both_engines(results: Any, name: str) -> None:
    _comb, on_duckdb, on_spark = results
    a = on_duckdb[name].sort_by([(k, "ascending") for k in KEYS[name]])
    b = on_spark[name].sort_by([(k, "ascending") for k in KEYS[name]])
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows > 0
    for col in a.column_names:
        for i, (x, y) in enumerate(zip(a[col].to_pylist(), b[col].to_pylist(), strict=True)):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=0, abs_tol=TOL), (name, col, i, x, y)
            else:
                assert x == y, (name, col, i, x, y)


def test_agent_device_day_takes_the_highest_batch_on_both_engines(results: Any) -> None:
    _comb, on_duckdb, on_spark = results
    for t in (on_duckdb["agent_device_day"], on_spark["agent_device_day"]):
        assert t.num_rows > 0
        assert set(t["up_s"].to_pylist()) == {900.0}
        assert all(b.endswith("-0000000002") for b in t["batch_id"].to_pylist())


def test_spark_reads_the_published_delta_tables(results: Any, spark: Any, tmp_path: Path) -> None:  # noqa: F811
    """Spark reads the files of each table's current Delta snapshot (see docs/gold-tables.md)."""
    from deltalake import DeltaTable

    _comb, on_duckdb, _spark = results
    gold = tmp_path / "gold"
    publish(gold, on_duckdb, full=True, days=[], new_batches=[])
    for name in ("device_day", "fleet_day", "quarantine"):
        files = DeltaTable(str(gold / name)).file_uris()
        df = spark.read.parquet(*files)
        assert df.count() == on_duckdb[name].num_rows
        if name == "quarantine":
            # a UTC-aware Delta timestamp reads back as the same instant in a UTC session
            first = df.select("ts").collect()[0][0]
            want = on_duckdb[name]["ts"][0].as_py()
            assert first.replace(tzinfo=want.tzinfo) == want
