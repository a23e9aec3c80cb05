"""Inputs the KPI computation refuses, with messages that name the problem and the fix."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from agent.errors import AgentError, KpiInputError
from agent.kpi import compute_kpis
from schemas import Device
from schemas.batch import BATCH_SCHEMA

DAY = [date(2026, 1, 1)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_empty_inputs_give_rows_only_for_eligible_registered_devices() -> None:
    assert compute_kpis(BATCH_SCHEMA.empty_table(), [], DAY).num_rows == 0
    rows = compute_kpis(
        BATCH_SCHEMA.empty_table(), [Device(device_id="a", site="s")], DAY
    ).to_pylist()
    assert [(r["device_id"], r["unknown_s"], r["device_uptime"]) for r in rows] == [
        ("a", 86400.0, None)
    ]


def test_duplicate_registry_rows_are_refused() -> None:
    reg = [Device(device_id="a", site="s"), Device(device_id="a", site="t")]
    with pytest.raises(KpiInputError, match="'a' appears twice"):
        compute_kpis(BATCH_SCHEMA.empty_table(), reg, DAY)


def test_missing_columns_and_bad_settings_are_named() -> None:
    with pytest.raises(KpiInputError, match="'record_type'"):
        compute_kpis(pa.table({"x": [1]}), [], DAY)
    with pytest.raises(AgentError, match=r"gap_k 0\.5"):
        compute_kpis(BATCH_SCHEMA.empty_table(), [], DAY, gap_k=0.5)
    obs = pa.Table.from_pylist(
        [{"record_type": "observation", "gateway_id": "g", "ts": T0}], schema=BATCH_SCHEMA
    )
    with pytest.raises(KpiInputError, match="end_ts"):
        compute_kpis(obs, [], DAY)
    reading = pa.Table.from_pylist(
        [{"record_type": "reading", "gateway_id": "g", "kind": "telemetry", "ts": T0}],
        schema=BATCH_SCHEMA,
    )
    with pytest.raises(KpiInputError, match="null 'device_id'"):
        compute_kpis(reading, [], DAY)
