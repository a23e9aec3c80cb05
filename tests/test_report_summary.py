"""The report's pure parts: time-weighted roll-ups, the firmware verdict, geohash boxes,
lineage rows, sampling."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pygeohash
import pytest
from hypothesis import given
from hypothesis import strategies as st

from central.report.geohash import decode_box
from central.report.lineage import failure_of, lineage
from central.report.plots import MAX_POINTS, sample, to_svg
from central.report.summary import (
    MIN_FIRMWARE_SHARE,
    Group,
    firmware_series,
    firmware_verdict,
    rollup,
    summarize,
)
from tests.report_support import DAYS, fleet_rows, gold_tables, write_gold


def test_rollup_is_time_weighted_not_a_mean_of_ratios() -> None:
    # an hour at 0 % and a day at 100 %: the mean of ratios says 50 %, time says 96 %
    t = pa.table(
        {
            "firmware_version": ["1.0", "1.0", None],
            "up_s": [0.0, 86_400.0, 10.0],
            "down_s": [3_600.0, 0.0, 0.0],
            "unknown_s": [0.0, 0.0, 5.0],
            "devices": [1, 1, 1],
        }
    )
    groups = {g.key: g for g in rollup(t, "firmware_version", "unknown")}
    assert groups["1.0"].uptime == pytest.approx(86_400 / 90_000)
    assert groups["1.0"].device_days == 2
    assert groups["unknown"].unknown_s == 5.0  # a null version gets a name, not dropped


def test_firmware_verdict_ignores_versions_too_small_to_judge() -> None:
    big_ok = Group("2.3.1", up_s=990_000.0, down_s=10_000.0)
    big_bad = Group("2.4.0", up_s=90_000.0, down_s=10_000.0)
    tiny_worse = Group("9.9.9-test", up_s=0.0, down_s=MIN_FIRMWARE_SHARE * 1_000.0)
    v = firmware_verdict([big_ok, big_bad, tiny_worse])
    assert v is not None and v.worst.key == "2.4.0"
    assert v.rest is not None
    assert v.rest.uptime == pytest.approx(990_000 / (1_000_000 + MIN_FIRMWARE_SHARE * 1_000))
    assert v.down_share == pytest.approx(10_000 / (20_000 + MIN_FIRMWARE_SHARE * 1_000))


def test_summary_matches_sums_of_the_device_rows(tmp_path: Path) -> None:
    from central.report import load_gold

    fleet = fleet_rows()
    write_gold(tmp_path / "gold", gold_tables(fleet))
    s = summarize(load_gold(tmp_path / "gold"))
    assert [d.day for d in s.days] == DAYS
    assert s.total.up_s == pytest.approx(sum(r["up_s"] for r in fleet.device_day))
    assert s.total.down_s == pytest.approx(sum(r["down_s"] for r in fleet.device_day))
    assert s.device_count == len({r["device_id"] for r in fleet.device_day})
    top = s.top_devices[0]
    per_device: dict[str, float] = {}
    for r in fleet.device_day:
        per_device[r["device_id"]] = per_device.get(r["device_id"], 0.0) + r["down_s"]
    assert top.down_s == pytest.approx(max(per_device.values()))
    assert s.target == 0.99 and s.target_from_gold
    assert s.alert_down_correlation is not None and s.alert_down_correlation > 0.5


def test_firmware_series_pools_small_versions_keeps_the_worst(tmp_path: Path) -> None:
    from central.report import load_gold

    write_gold(tmp_path / "gold", gold_tables(fleet_rows()))
    gold = load_gold(tmp_path / "gold")
    s = summarize(gold)
    assert set(firmware_series(gold.firmware_day, s, 8)) == {"2.2.0", "2.3.1", "2.4.0"}
    pooled = firmware_series(gold.firmware_day, s, 2)
    assert set(pooled) == {"2.4.0", "other versions"}


@given(
    st.floats(-89.999, 89.999, allow_nan=False),
    st.floats(-179.999, 179.999, allow_nan=False),
    st.integers(1, 9),
)
def test_geohash_box_matches_pygeohash(lat: float, lon: float, precision: int) -> None:
    cell = pygeohash.encode(lat, lon, precision)
    box = decode_box(cell)
    assert box.lat_min <= lat <= box.lat_max
    assert box.lon_min <= lon <= box.lon_max
    clat, clon, dlat, dlon = pygeohash.decode_exactly(cell)
    assert box.center == pytest.approx((clat, clon))
    assert (box.lat_max - box.lat_min) / 2 == pytest.approx(dlat)
    assert (box.lon_max - box.lon_min) / 2 == pytest.approx(dlon)


def test_geohash_rejects_bad_cells() -> None:
    with pytest.raises(ValueError, match="'a' is not in"):
        decode_box("u1a")
    with pytest.raises(ValueError, match="empty"):
        decode_box("")


def test_lineage_reads_a_record_and_tolerates_gaps() -> None:
    record = {
        "run_id": "r1",
        "pipeline": "consolidate",
        "status": "ok",
        "duration_s": 1.5,
        "steps": [
            {
                "name": "bronze",
                "status": "ok",
                "duration_s": 0.2,
                "cache": "off",
                "output": {"rows": 10, "schema": {"a": "int64", "b": "string"}},
            },
            {"name": "gold", "status": "blocked", "blocked_by": "gate x"},
            "not a step",
        ],
        "gates": [
            {
                "gate": "uptime_range",
                "on": "device_day",
                "passed": False,
                "failed_rows": 2,
                "reasons": {"uptime > 1": 2},
            }
        ],
        "inputs": {"batches": {"rows": 3, "schema": {"batch_id": "string"}}},
        "input_batches": [
            {"batch_id": "gw-1-000001", "gateway_id": "gw-1", "rows": 20, "sha256": "ab"},
            "gw-2-000001",
        ],
    }
    lin = lineage(record)
    assert [(s.name, s.rows, s.columns) for s in lin.steps] == [
        ("bronze", 10, 2),
        ("gold", None, None),
    ]
    assert lin.steps[1].note == "blocked by gate x"
    assert lin.gates[0].detail == "uptime > 1 (2)" and not lin.gates[0].passed
    assert lin.inputs == [("batches", 3, 1)]
    assert [b.batch_id for b in lin.batches] == ["gw-1-000001", "gw-2-000001"]
    assert lin.batches[0].detail == "sha256=ab"
    assert failure_of(record) == "gate uptime_range on device_day rejected 2 rows"
    assert lineage({}).steps == [] and lineage({}).batches_total is None


def test_scatter_sample_is_bounded_and_repeatable() -> None:
    t = pa.table({"x": list(range(MAX_POINTS * 3))})
    a, b = sample(t), sample(t)
    assert a.num_rows == MAX_POINTS and a.equals(b)
    small = t.slice(0, 10)
    assert sample(small) is small


def test_svg_has_no_prolog_and_scales() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([date(2026, 1, 1).toordinal(), 2], [1, 2])
    svg = to_svg(fig, "A test")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "http" not in svg and "<?xml" not in svg and "<!DOCTYPE" not in svg
    assert 'aria-label="A test"' in svg and "viewBox" in svg and ' width="' not in svg[:200]
