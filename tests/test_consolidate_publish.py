"""Gold Delta tables: predicate overwrite per day, UTC timestamps, readable by DuckDB and pandas."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from central.consolidate.publish import publish, read_rows


def _device_day(day: date, devices: list[str], up: float) -> pa.Table:
    return pa.table(
        {
            "day": pa.array([day] * len(devices), pa.date32()),
            "device_id": devices,
            "up_s": [up] * len(devices),
        }
    )


def _quarantine(batch_ids: list[str]) -> pa.Table:
    n = len(batch_ids)
    return pa.table(
        {
            "day": pa.array([date(2026, 1, 1)] * n, pa.date32()),
            "source": ["batch"] * n,
            "batch_id": batch_ids,
            "ts": pa.array(
                [datetime(2026, 1, 1, 1, 2, 3, tzinfo=UTC)] * n, pa.timestamp("ms", "UTC")
            ),
            "reason": ["bad"] * n,
        }
    )


def test_predicate_overwrite_replaces_only_the_recomputed_days(tmp_path: Path) -> None:
    d1, d2 = date(2026, 1, 1), date(2026, 1, 2)
    first = pa.concat_tables([_device_day(d1, ["a", "b"], 10.0), _device_day(d2, ["a"], 20.0)])
    publish(tmp_path, {"device_day": first}, full=True, days=[d1, d2], new_batches=[])
    # day 2 recomputed: b appears, a changes; day 1 is untouched
    publish(
        tmp_path,
        {"device_day": _device_day(d2, ["a", "b"], 30.0)},
        full=False,
        days=[d2],
        new_batches=[],
    )
    t = DeltaTable(str(tmp_path / "device_day"))
    assert t.version() == 1
    rows = sorted(t.to_pyarrow_table().to_pylist(), key=lambda r: (r["day"], r["device_id"]))
    assert [(r["day"], r["device_id"], r["up_s"]) for r in rows] == [
        (d1, "a", 10.0),
        (d1, "b", 10.0),
        (d2, "a", 30.0),
        (d2, "b", 30.0),
    ]
    assert read_rows(tmp_path, "device_day", [d1]).num_rows == 2


def test_quarantine_is_replaced_per_batch(tmp_path: Path) -> None:
    publish(tmp_path, {"quarantine": _quarantine(["b1"])}, full=True, days=[], new_batches=["b1"])
    publish(tmp_path, {"quarantine": _quarantine(["b2"])}, full=False, days=[], new_batches=["b2"])
    publish(tmp_path, {"quarantine": _quarantine(["b2"])}, full=False, days=[], new_batches=["b2"])
    got = DeltaTable(str(tmp_path / "quarantine")).to_pyarrow_table()
    assert sorted(got["batch_id"].to_pylist()) == ["b1", "b2"]


@pytest.fixture
def published(tmp_path: Path) -> Path:
    publish(tmp_path, {"quarantine": _quarantine(["b1", "b2"])}, full=True, days=[], new_batches=[])
    publish(
        tmp_path,
        {"device_day": _device_day(date(2026, 1, 1), ["a", "b"], 5.0)},
        full=True,
        days=[],
        new_batches=[],
    )
    return tmp_path


def test_timestamps_are_utc_aware_in_delta(published: Path) -> None:
    schema = DeltaTable(str(published / "quarantine")).schema()
    ts = next(f for f in schema.fields if f.name == "ts")
    assert str(ts.type) == 'PrimitiveType("timestamp")'  # Delta's UTC-adjusted type, not _ntz
    arrow = DeltaTable(str(published / "quarantine")).to_pyarrow_table()
    assert arrow.schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_duckdb_reads_gold(published: Path) -> None:
    # DuckDB scans the Delta snapshot through delta-rs's Arrow dataset (its own delta
    # extension is a download, which this machine cannot make; docs/gold-tables.md)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    device_day = DeltaTable(str(published / "device_day")).to_pyarrow_dataset()  # noqa: F841
    quarantine = DeltaTable(str(published / "quarantine")).to_pyarrow_dataset()  # noqa: F841
    assert con.execute("SELECT count(*) FROM device_day").fetchall() == [(2,)]
    [(ts,)] = con.execute("SELECT max(ts) FROM quarantine").fetchall()
    assert ts == datetime(2026, 1, 1, 1, 2, 3, tzinfo=UTC)


def test_pandas_reads_gold(published: Path) -> None:
    df = DeltaTable(str(published / "quarantine")).to_pandas()
    assert len(df) == 2
    assert str(df["ts"].dt.tz) == "UTC"
    dd = DeltaTable(str(published / "device_day")).to_pandas()
    assert sorted(dd["device_id"]) == ["a", "b"]
