"""The agents' KPI rows at central: accepted in v2 batches through the real API, kept apart
from the readings, published as gold ``agent_device_day`` (the latest copy per gateway,
device and day by batch sequence, never the agent's clock); v1 batches consolidate as
before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from central.config import load_config
from central.consolidate.dag import GOLD_TABLES
from central.consolidate.runner import consolidate
from schemas.batch import BATCH_SCHEMA_V1, batch_id, batch_metadata
from tests.central_support import (
    T0_MS,
    CentralServer,
    central_server,
    create_token,
    kpi_cols,
    make_batch,
    put,
)
from tests.consolidate_support import land, make_fleet, split_batches, write_config

__all__ = ["central_server"]  # the fixture, imported for pytest

HOUR_MS = 3_600_000


def gold(data_dir: Path, name: str) -> pa.Table:
    return DeltaTable(str(data_dir / "gold" / name)).to_pyarrow_table()


def agent_rows(data_dir: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    t = gold(data_dir, "agent_device_day").to_pylist()
    return {(r["gateway_id"], r["device_id"], r["day"].isoformat()): r for r in t}


def only_kpis(gw: str, devices: list[str], up_s: float, computed_ms: int) -> dict[str, list]:
    cols = kpi_cols(gw, 0, kpis=len(devices), up_s=up_s, computed_ms=computed_ms)
    cols["device_id"] = list(devices)
    return cols


def test_the_api_takes_v1_and_v2_and_gold_keeps_each_gateways_latest_row(
    central_server: CentralServer,
) -> None:
    server = central_server
    data = server.config.parent / "central"
    tokens = {g: create_token(server.config, g) for g in ("gw-a", "gw-b")}
    bodies = [
        # an agent not upgraded yet: a v1 file
        ("gw-a", 1, make_batch("gw-a", 1, 40, schema=BATCH_SCHEMA_V1,
                               metadata=batch_metadata("gw-a", 1, "1"))),
        # readings and two KPI rows (dev-0, dev-1), computed at 01:00
        ("gw-a", 2, make_batch("gw-a", 2, cols=kpi_cols("gw-a", 40, kpis=2, up_s=600.0))),
        # dev-0 again, changed; the gateway's clock had stepped back: computed "earlier"
        ("gw-a", 3, make_batch("gw-a", 3, cols=only_kpis("gw-a", ["dev-0"], 900.0, T0_MS))),
        # another gateway's view of the same device-day (a roaming device)
        ("gw-b", 1, make_batch("gw-b", 1, cols=only_kpis("gw-b", ["dev-0"], 300.0, T0_MS))),
    ]  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for gw, seq, body in bodies:
            r = put(client, batch_id(gw, seq), body, tokens[gw])
            assert r.status_code == 201, r.text
        # gw-b's token, a kpi row naming gw-a among its own: 403, nothing stored
        cols = only_kpis("gw-b", ["dev-5", "dev-6"], 60.0, T0_MS)
        cols["gateway_id"][1] = "gw-a"
        r = put(client, batch_id("gw-b", 2), make_batch("gw-b", 2, cols=cols), tokens["gw-b"])
        assert r.status_code == 403 and r.json()["error"] == "other_gateway", r.text
        # kpi rows in a v1 file: 422
        cols = {k: v for k, v in only_kpis("gw-b", ["dev-5"], 60.0, T0_MS).items()
                if k in BATCH_SCHEMA_V1.names}  # fmt: skip
        v1 = make_batch("gw-b", 2, cols=cols, schema=BATCH_SCHEMA_V1,
                        metadata=batch_metadata("gw-b", 2, "1"))  # fmt: skip
        r = put(client, batch_id("gw-b", 2), v1, tokens["gw-b"])
        assert r.status_code == 422 and "unknown in schema v1" in r.json()["detail"], r.text

    config = load_config(server.config, {})
    first = consolidate(config)
    assert first.status == "ok", first.message
    rows = agent_rows(data)
    day = "2026-01-01"
    assert sorted(rows) == [("gw-a", "dev-0", day), ("gw-a", "dev-1", day), ("gw-b", "dev-0", day)]
    assert rows[("gw-a", "dev-0", day)]["up_s"] == 900.0  # batch 3 wins whatever its clock said
    assert rows[("gw-a", "dev-0", day)]["batch_id"] == batch_id("gw-a", 3)
    assert rows[("gw-a", "dev-1", day)]["up_s"] == 600.0
    assert rows[("gw-b", "dev-0", day)]["up_s"] == 300.0
    r = rows[("gw-a", "dev-1", day)]
    assert (r["site"], r["eligible_s"], r["down_s"], r["unknown_s"]) == (
        "site-a", 86_400.0, 85_800.0, 0.0
    )  # fmt: skip
    assert r["connectivity_ratio"] == 0.5 and r["device_uptime"] == pytest.approx(600 / 86_400)
    assert int(r["computed_at"].timestamp() * 1000) == T0_MS + HOUR_MS
    # the KPI rows are no readings: device_day counts the readings only (batches 1 and 2 of
    # gw-a carry the same 40: counted once), and nothing is quarantined
    dd = gold(data, "device_day")
    assert pc.sum(dd["readings"]).as_py() == 40
    assert gold(data, "quarantine").num_rows == 0

    # nothing new: nothing changes
    versions = {n: DeltaTable(str(data / "gold" / n)).version() for n in GOLD_TABLES}
    assert consolidate(config).status == "nothing_new"
    assert {n: DeltaTable(str(data / "gold" / n)).version() for n in GOLD_TABLES} == versions

    # a later batch changes dev-1: the incremental run replaces that row, keeps the others
    with httpx.Client(base_url=server.url, timeout=30) as client:
        cols = only_kpis("gw-a", ["dev-1"], 1200.0, T0_MS + 2 * HOUR_MS)
        r = put(client, batch_id("gw-a", 4), make_batch("gw-a", 4, cols=cols), tokens["gw-a"])
        assert r.status_code == 201, r.text
    second = consolidate(config)
    assert second.status == "ok" and second.mode == "incremental", second.message
    after = agent_rows(data)
    assert after[("gw-a", "dev-1", day)]["up_s"] == 1200.0
    assert {k: v["up_s"] for k, v in after.items() if k[1] == "dev-0"} == {
        ("gw-a", "dev-0", day): 900.0,
        ("gw-b", "dev-0", day): 300.0,
    }
    incremental = gold(data, "agent_device_day").sort_by("batch_id")
    assert consolidate(config, full=True).status == "ok"
    assert gold(data, "agent_device_day").sort_by("batch_id").equals(incremental)


def test_a_kpi_row_that_breaks_the_rules_is_quarantined_and_reconciles(
    central_server: CentralServer,
) -> None:
    server = central_server
    data = server.config.parent / "central"
    token = create_token(server.config, "gw-a")
    cols = kpi_cols("gw-a", 10, kpis=3)
    cols["connectivity_ratio"][-1] = 1.5  # dev-2
    cols["device_id"][-2] = None  # dev-1
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = put(client, batch_id("gw-a", 1), make_batch("gw-a", 1, cols=cols), token)
        assert r.status_code == 201, r.text
    out = consolidate(load_config(server.config, {}))
    assert out.status == "ok", out.message
    assert [(r["device_id"], r["up_s"]) for r in gold(data, "agent_device_day").to_pylist()] == [
        ("dev-0", 600.0)
    ]
    q = gold(data, "quarantine").sort_by("reason").to_pylist()
    assert [(r["record_type"], r["device_id"], r["reason"]) for r in q] == [
        ("kpi", "dev-2", "kpi row whose connectivity_ratio is outside [0, 1]"),
        ("kpi", None, "kpi row without device_id"),
    ]


def test_a_v1_only_landing_consolidates_as_the_same_rows_in_v2_files(tmp_path: Path) -> None:
    fleet = make_fleet(n_devices=10, hours=30, n_gateways=2, seed=3)
    batches = split_batches(fleet)
    results = {}
    for version in ("1", "2"):
        root = tmp_path / f"v{version}"
        data = root / "data"
        data.mkdir(parents=True)
        cfg = write_config(root, data, {})
        if version == "1":
            ids = land(data, [(g, b, t.select(BATCH_SCHEMA_V1.names)) for g, b, t in batches],
                       version="1")  # fmt: skip
        else:
            ids = land(data, batches)
        assert len(ids) == len(batches)
        out = consolidate(load_config(cfg, {}))
        assert out.status == "ok", out.message
        results[version] = {n: gold(data, n) for n in GOLD_TABLES}
    assert results["1"]["agent_device_day"].num_rows == 0
    for name in GOLD_TABLES:
        keys = [c for c in ("day", "gateway_id", "device_id", "firmware_version", "site",
                            "geohash5", "batch_id", "ts", "seq", "reason")
                if c in results["1"][name].column_names]  # fmt: skip
        a = results["1"][name].sort_by([(k, "ascending") for k in keys])
        b = results["2"][name].sort_by([(k, "ascending") for k in keys])
        assert a.equals(b), name
