"""A million readings go through the KPI computation in seconds, not minutes."""

from __future__ import annotations

import time
from datetime import date

import pyarrow.compute as pc

from agent.kpi import compute_kpis, kpi_checks
from bench.bench_kpi import synthetic_batch


def test_one_million_readings_in_reasonable_time() -> None:
    batch, registry = synthetic_batch(devices=1000, per_device=1000)
    assert batch.num_rows > 900_000
    t = time.perf_counter()
    out = compute_kpis(batch, registry, [date(2026, 1, 1), date(2026, 1, 2)])
    took = time.perf_counter() - t
    # about 0.5-2 s here; a per-reading or per-second Python loop would take minutes
    assert took < 15, f"compute_kpis took {took:.1f} s for {batch.num_rows} readings"
    assert out.num_rows == 2000
    for mask in kpi_checks(out).values():
        assert pc.all(mask).as_py()
    # each device speaks 1000 x 30 s = 8.3 h of day 1 (5% lost, single losses are not
    # outages): uptime ~30 000 / 86 400, connectivity up to ~0.95 x 1000 / 2880 slots (less
    # for devices whose 0-2 s jitter straddles a slot boundary: see docs/kpi.md); day 2 silent
    day1 = out.filter(pc.equal(out["day"], date(2026, 1, 1)))
    day2 = out.filter(pc.equal(out["day"], date(2026, 1, 2)))
    assert 0.33 < pc.min(day1["device_uptime"]).as_py() <= pc.max(day1["device_uptime"]).as_py()
    assert pc.max(day1["device_uptime"]).as_py() < 0.36
    assert pc.min(day1["connectivity_ratio"]).as_py() > 0.2
    assert pc.max(day1["connectivity_ratio"]).as_py() < 0.35
    assert pc.max(day2["device_uptime"]).as_py() == 0.0
