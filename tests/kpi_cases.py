"""Loader of the golden KPI cases in tests/cases/kpi/ (DESIGN §4), shared by agent and central.

Each case folder holds ``case.toml`` (description, days, optional gap_k),
``registry.csv``, ``readings.csv``, ``observations.csv`` and ``expected.csv``;
docs/kpi.md explains the format and the figures. Both implementations consume
exactly what ``load_cases()`` returns: the registry as ``schemas.Device``
models and the readings plus observations as one Arrow table in
``schemas.batch.BATCH_SCHEMA`` form.
"""

from __future__ import annotations

import csv
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from schemas import DEFAULT_GAP_K, NO_SEQ, Device
from schemas.batch import BATCH_SCHEMA, RECORD_OBSERVATION, RECORD_READING

CASES_DIR = Path(__file__).parent / "cases" / "kpi"
KPI_COLUMNS = ("up_s", "down_s", "unknown_s", "device_uptime", "connectivity_ratio")
TOLERANCE = 1e-6


@dataclass(frozen=True)
class KpiCase:
    """One golden case: inputs and the per-(day, device) figures worked out by hand."""

    name: str
    description: str
    days: list[date]
    gap_k: float
    registry: list[Device]
    # reading rows and observation rows, BATCH_SCHEMA
    batch: pa.Table
    # one dict per row: day (date), device_id, up_s, down_s, unknown_s (float),
    # device_uptime, connectivity_ratio (float or None)
    expected: list[dict[str, Any]]
    path: Path


def parse_time(text: str) -> datetime:
    """RFC 3339 UTC text as an aware datetime."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no offset; golden cases use RFC 3339 UTC")
    return dt.astimezone(UTC)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        # '#' lines are comments so the data files can carry their own notes
        lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(lines)]


def _opt(v: str) -> str | None:
    return v if v != "" else None


def _registry(path: Path) -> list[Device]:
    out = []
    for row in _rows(path):
        # empty cells are omitted so the model's defaults (heartbeat 30 s) apply
        out.append(Device.model_validate({k: v for k, v in row.items() if v != ""}))
    return out


def _batch(readings: Path, observations: Path) -> pa.Table:
    cols: dict[str, list[Any]] = {f.name: [] for f in BATCH_SCHEMA}

    def add(**values: Any) -> None:
        for name in cols:
            cols[name].append(values.get(name))

    for r in _rows(readings):
        ts = parse_time(r["ts"])
        add(
            record_type=RECORD_READING,
            gateway_id=r["gateway_id"],
            device_id=r["device_id"],
            site=r["site"],
            kind=r["kind"],
            ts=ts,
            seq=int(r["seq"]) if r.get("seq") else NO_SEQ,
            received_at=parse_time(r["received_at"]) if r.get("received_at") else ts,
            state=_opt(r.get("state", "")),
            event_type=_opt(r.get("event_type", "")),
        )
    for r in _rows(observations):
        add(
            record_type=RECORD_OBSERVATION,
            gateway_id=r["gateway_id"],
            ts=parse_time(r["start"]),
            end_ts=parse_time(r["end"]),
        )
    return pa.Table.from_pydict(cols, schema=BATCH_SCHEMA)


def _num(v: str) -> float | None:
    return None if v == "" else float(v)


def _expected(path: Path) -> list[dict[str, Any]]:
    out = []
    for row in _rows(path):
        out.append(
            {
                "day": date.fromisoformat(row["day"]),
                "device_id": row["device_id"],
                **{k: _num(row[k]) for k in KPI_COLUMNS},
            }
        )
    return out


def load_case(folder: Path) -> KpiCase:
    """Read one case folder."""
    meta = tomllib.loads((folder / "case.toml").read_text(encoding="utf-8"))
    return KpiCase(
        name=folder.name,
        description=meta["description"],
        days=[date.fromisoformat(d) for d in meta["days"]],
        gap_k=float(meta.get("gap_k", DEFAULT_GAP_K)),
        registry=_registry(folder / "registry.csv"),
        batch=_batch(folder / "readings.csv", folder / "observations.csv"),
        expected=_expected(folder / "expected.csv"),
        path=folder,
    )


def load_cases(root: Path = CASES_DIR) -> list[KpiCase]:
    """Every case under tests/cases/kpi/, sorted by name."""
    return [load_case(p) for p in sorted(root.iterdir()) if (p / "case.toml").is_file()]


def compare(
    actual: Iterable[Mapping[str, Any]], expected: list[dict[str, Any]], tol: float = TOLERANCE
) -> list[str]:
    """Differences between computed rows and expected rows (empty list = match).

    Rows are matched on (day, device_id); ``day`` may be a date or ISO text. Extra
    columns in ``actual`` are ignored; missing or extra rows are reported.
    """

    def key(r: Mapping[str, Any]) -> tuple[str, str]:
        d = r["day"]
        return (d.isoformat() if isinstance(d, date) else str(d)[:10], str(r["device_id"]))

    got = {key(r): r for r in actual}
    want = {key(r): r for r in expected}
    problems = [f"missing row {k}" for k in sorted(want.keys() - got.keys())]
    problems += [f"unexpected row {k}" for k in sorted(got.keys() - want.keys())]
    for k in sorted(want.keys() & got.keys()):
        for col in KPI_COLUMNS:
            w, g = want[k][col], got[k].get(col)
            if w is None or g is None or (isinstance(g, float) and math.isnan(g)):
                same = w is None and (g is None or (isinstance(g, float) and math.isnan(g)))
            else:
                same = abs(float(g) - float(w)) <= tol
            if not same:
                problems.append(f"{k} {col}: expected {w}, got {g}")
    return problems
