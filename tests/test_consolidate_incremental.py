"""Incremental consolidation: late data corrects old days, re-runs change nothing."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from central.config import load_config
from central.consolidate.dag import GOLD_TABLES
from central.consolidate.runner import consolidate
from tests.consolidate_support import (
    Fleet,
    land,
    make_fleet,
    split_batches,
    write_config,
    write_sources,
)

SORT_KEYS = {
    "device_day": ["day", "device_id"],
    "device_firmware_day": ["day", "device_id", "firmware_version"],
    "fleet_day": ["day"],
    "firmware_day": ["day", "firmware_version"],
    "site_day": ["day", "site"],
    "geo_day": ["day", "geohash5"],
    "quarantine": ["day", "batch_id", "ts", "device_id", "kind", "seq"],
    "agent_device_day": ["gateway_id", "day", "device_id"],
}


def gold(data_dir: Path, name: str) -> pa.Table:
    t = DeltaTable(str(data_dir / "gold" / name)).to_pyarrow_table()
    return t.sort_by([(k, "ascending") for k in SORT_KEYS[name]])


def assert_same(a: pa.Table, b: pa.Table, name: str, tol: float = 1e-9) -> None:
    assert a.column_names == b.column_names, name
    assert a.num_rows == b.num_rows, f"{name}: {a.num_rows} rows vs {b.num_rows}"
    for col in a.column_names:
        x, y = a[col].to_pylist(), b[col].to_pylist()
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            if isinstance(u, float) and isinstance(v, float):
                assert math.isclose(u, v, rel_tol=0, abs_tol=tol), (name, col, i, u, v)
            else:
                assert u == v, (name, col, i, u, v)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return make_fleet(n_devices=24, hours=54, n_gateways=3, seed=11)


def _setup(root: Path, fleet: Fleet) -> tuple[Path, Path]:
    data = root / "data"
    data.mkdir(parents=True)
    cfg = write_config(root, data, write_sources(root / "src", fleet))
    return data, cfg


def test_late_batches_give_the_same_gold_as_one_full_run(tmp_path: Path, fleet: Fleet) -> None:
    batches = split_batches(fleet)
    # land most batches, then the rest; the held-back ones include early hours of an old day
    late = {bid for i, (_, bid, _) in enumerate(batches) if i % 4 == 1}
    first = [b for b in batches if b[1] not in late]
    second = [b for b in batches if b[1] in late]

    inc_data, inc_cfg = _setup(tmp_path / "inc", fleet)
    land(inc_data, first)
    out1 = consolidate(load_config(inc_cfg, {}))
    assert out1.status == "ok" and out1.mode == "full"
    before = gold(inc_data, "device_day")
    land(inc_data, second)
    out2 = consolidate(load_config(inc_cfg, {}))
    assert out2.mode == "incremental"
    assert sorted(out2.new_batches) == sorted(late)

    full_data, full_cfg = _setup(tmp_path / "full", fleet)
    land(full_data, batches)
    out3 = consolidate(load_config(full_cfg, {}))
    assert out3.mode == "full"

    for name in GOLD_TABLES:
        assert_same(gold(inc_data, name), gold(full_data, name), name)
    # the late data did change old days
    after = gold(inc_data, "device_day")
    assert not pc.all(pc.equal(before["up_s"], after["up_s"])).as_py()


def test_rerun_with_nothing_new_changes_nothing(tmp_path: Path, fleet: Fleet) -> None:
    data, cfg = _setup(tmp_path, fleet)
    land(data, split_batches(fleet))
    consolidate(load_config(cfg, {}))
    versions = {n: DeltaTable(str(data / "gold" / n)).version() for n in GOLD_TABLES}
    tables = {n: gold(data, n) for n in GOLD_TABLES}
    again = consolidate(load_config(cfg, {}))
    assert again.status == "nothing_new"
    assert again.published == []
    assert {n: DeltaTable(str(data / "gold" / n)).version() for n in GOLD_TABLES} == versions
    for n in GOLD_TABLES:
        assert gold(data, n).equals(tables[n])


def test_roaming_and_duplicate_readings_count_once(tmp_path: Path, fleet: Fleet) -> None:
    # every reading uploaded a second time by another gateway, later: nothing may change
    data, cfg = _setup(tmp_path / "once", fleet)
    land(data, split_batches(fleet))
    consolidate(load_config(cfg, {}))
    once = gold(data, "device_day")

    b = fleet.batch
    readings = b.filter(pc.equal(b["record_type"], "reading"))
    gws = sorted(set(b["gateway_id"].to_pylist()))
    nxt = {g: gws[(i + 1) % len(gws)] for i, g in enumerate(gws)}
    copy = readings.set_column(
        readings.schema.get_field_index("gateway_id"),
        "gateway_id",
        pa.array([nxt[g] for g in readings["gateway_id"].to_pylist()], pa.string()),
    )
    copy = copy.set_column(
        copy.schema.get_field_index("received_at"),
        "received_at",
        pc.add(copy["received_at"], pa.scalar(5000, pa.duration("ms"))),
    )
    twice = Fleet(
        pa.concat_tables([b, copy.cast(b.schema)]),
        fleet.registry,
        fleet.firmware,
        fleet.alerts,
        fleet.days,
    )
    data2, cfg2 = _setup(tmp_path / "twice", twice)
    land(data2, split_batches(twice))
    consolidate(load_config(cfg2, {}))
    # uptime and downtime are identical; only the observed time may grow (more gateways
    # heard each device), which can turn unknown into down but never changes up
    t2 = gold(data2, "device_day")
    assert once["up_s"].to_pylist() == t2["up_s"].to_pylist()
    assert once["readings"].to_pylist() == t2["readings"].to_pylist()
    assert fleet.notes["roaming"], "the fleet must contain roaming devices"
    assert fleet.notes["duplicated"] > 0
