"""Helpers for the report tests: small gold Delta tables in consolidation's layout, a real
run record, and headless Chromium screenshots.

The fleet is deterministic: 4 sites x 6 devices over 3 days; firmware 2.4.0 reaches some
devices of ams, gro and rtm at noon on day 2 and crash-loops (about a fifth of its time
down); ein gets no update but loses power for two hours on day 2. The roll-ups are
summed here from the device rows, the way consolidation's gold step does, so a test can
check the report's figures against sums it makes itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pygeohash
from deltalake import write_deltalake

from pipeline import Pipeline, gate

DAYS = [date(2026, 1, 1) + timedelta(days=i) for i in range(3)]
SITES = {  # name: (lat, lon)
    "ams": (52.3676, 4.9041),
    "rtm": (51.9244, 4.4777),
    "ein": (51.4416, 5.4697),
    "gro": (53.2194, 6.5665),
}
PER_SITE = 6
DAY_S = 86_400.0
FAULTY = "2.4.0"
TARGET = 0.99
LOSSY_DEVICE = "rtm-02"
PARTITIONED = {"device_day": ["day"], "device_firmware_day": ["day"]}  # as publish.py does
# which devices (by number) of each site get 2.4.0
ROLLOUT = {"ams": {0, 3}, "gro": {0, 2, 4}, "rtm": {0}, "ein": set()}
OUTAGE_SITE, OUTAGE_DAY, OUTAGE_S = "ein", DAYS[1], 7200.0


@dataclass(frozen=True)
class Fleet:
    """What was written, for the assertions."""

    device_day: list[dict[str, Any]]
    device_firmware_day: list[dict[str, Any]]


def _down_on(version: str, device_no: int, seconds: float) -> float:
    # crash loops on the faulty version; a few minutes here and there elsewhere
    share = 0.2 + 0.02 * (device_no % 3) if version == FAULTY else 0.0015 * (device_no % 4)
    return round(seconds * share, 3)


def fleet_rows() -> Fleet:
    """Device-day and device-firmware-day rows of the test fleet."""
    dd: list[dict[str, Any]] = []
    dfd: list[dict[str, Any]] = []
    for site, (lat, lon) in SITES.items():
        for n in range(PER_SITE):
            device = f"{site}-{n:02d}"
            # devices of one site share a cell except the last one, a few km away
            cell = pygeohash.encode(lat + (0.05 if n == PER_SITE - 1 else 0.0), lon, 5)
            upgraded = n in ROLLOUT[site]
            for i, day in enumerate(DAYS):
                if upgraded and i == 1:
                    parts = [("2.3.1", DAY_S / 2), (FAULTY, DAY_S / 2)]
                elif upgraded and i > 1:
                    parts = [(FAULTY, DAY_S)]
                else:
                    parts = [("2.3.1" if n % 2 else "2.2.0", DAY_S)]
                unknown = 600.0 if device == "gro-01" else 0.0
                up_sum = down_sum = 0.0
                for version, seconds in parts:
                    down = _down_on(version, n, seconds)
                    if site == OUTAGE_SITE and day == OUTAGE_DAY:
                        down += OUTAGE_S * seconds / DAY_S
                    unk = unknown * seconds / DAY_S
                    up = seconds - down - unk
                    dfd.append(
                        {
                            "day": day,
                            "device_id": device,
                            "firmware_version": version,
                            "eligible_s": seconds,
                            "up_s": up,
                            "down_s": down,
                            "unknown_s": unk,
                        }
                    )
                    up_sum += up
                    down_sum += down
                on_faulty = parts[-1][0] == FAULTY
                dd.append(
                    {
                        "day": day,
                        "device_id": device,
                        "site": site,
                        "geohash5": cell,
                        "geohash6": cell + "0",
                        "firmware_version": parts[-1][0],
                        "eligible_s": DAY_S,
                        "up_s": up_sum,
                        "down_s": down_sum,
                        "unknown_s": unknown,
                        "device_uptime": up_sum / (up_sum + down_sum),
                        "connectivity_ratio": 0.72 if device == LOSSY_DEVICE else 0.985,
                        "slots_observed": 2880,
                        "slots_with_reading": 2800,
                        "readings": 2900,
                        "alert_count": (3 + n % 3) if on_faulty else (n + i) % 2,
                        "alert_down_s": down_sum * 0.9 if on_faulty else 0.0,
                        "in_registry": True,
                    }
                )
    return Fleet(dd, dfd)


def _rollup(rows: list[dict[str, Any]], keys: list[str], uptime_name: str) -> list[dict[str, Any]]:
    acc: dict[tuple[Any, ...], dict[str, Any]] = {}
    devices: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for r in rows:
        k = tuple(r[c] for c in keys)
        a = acc.setdefault(
            k,
            {
                **dict(zip(keys, k, strict=True)),
                "eligible_s": 0.0,
                "up_s": 0.0,
                "down_s": 0.0,
                "unknown_s": 0.0,
                "alert_count": 0,
            },
        )
        for c in ("eligible_s", "up_s", "down_s", "unknown_s"):
            a[c] += r.get(c, 0.0)
        a["alert_count"] += r.get("alert_count", 0)
        devices[k].add(r["device_id"])
    out = []
    for k, a in sorted(acc.items()):
        den = a["up_s"] + a["down_s"]
        out.append({**a, "devices": len(devices[k]), uptime_name: a["up_s"] / den if den else None})
    return out


def gold_tables(fleet: Fleet) -> dict[str, pa.Table]:
    """The gold tables of ``fleet`` with consolidation's columns (and a few extra)."""
    dd, dfd = fleet.device_day, fleet.device_firmware_day
    fleet_day = _rollup(dd, ["day"], "fleet_uptime")
    for r in fleet_day:
        day_rows = [x for x in dd if x["day"] == r["day"]]
        r["devices_meeting_target"] = sum(x["device_uptime"] >= TARGET for x in day_rows)
        r["devices_with_uptime"] = len(day_rows)
        r["uptime_target"] = TARGET
    firmware_day = _rollup(dfd, ["day", "firmware_version"], "device_uptime")
    for r in firmware_day:
        r.pop("alert_count")
    quarantine = [
        {
            "day": DAYS[0],
            "source": "batch",
            "batch_id": "gw-north-000001",
            "gateway_id": "gw-north",
            "record_type": "reading",
            "device_id": "ams-01",
            "kind": "telemetry",
            "ts": None,
            "seq": 1,
            "reason": "device_id does not match the topic",
            "ingested_at": None,
        },
    ]
    return {
        "device_day": pa.Table.from_pylist(dd),
        "device_firmware_day": pa.Table.from_pylist(dfd),
        "fleet_day": pa.Table.from_pylist(fleet_day),
        "firmware_day": pa.Table.from_pylist(firmware_day),
        "site_day": pa.Table.from_pylist(_rollup(dd, ["day", "site"], "device_uptime")),
        "geo_day": pa.Table.from_pylist(_rollup(dd, ["day", "geohash5"], "device_uptime")),
        "quarantine": pa.Table.from_pylist(
            quarantine,
            schema=pa.schema(
                [
                    ("day", pa.date32()),
                    ("source", pa.string()),
                    ("batch_id", pa.string()),
                    ("gateway_id", pa.string()),
                    ("record_type", pa.string()),
                    ("device_id", pa.string()),
                    ("kind", pa.string()),
                    ("ts", pa.timestamp("us", "UTC")),
                    ("seq", pa.int64()),
                    ("reason", pa.string()),
                    ("ingested_at", pa.timestamp("us", "UTC")),
                ]
            ),
        ),
    }


def write_gold(gold_dir: Path, tables: dict[str, pa.Table], skip: tuple[str, ...] = ()) -> None:
    """Each table as a Delta table under ``gold_dir/<name>``, as consolidation publishes
    (per-device tables partitioned by day)."""
    for name, table in tables.items():
        if name not in skip:
            write_deltalake(
                str(gold_dir / name), table, mode="overwrite", partition_by=PARTITIONED.get(name)
            )


def text_of(html: str) -> str:
    """The page's text outside the SVGs, tags removed (for reading sentences)."""
    import html as html_lib

    body = re.sub(r"<svg.*?</svg>", " ", html, flags=re.S)
    return html_lib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def uptime(rows: list[dict[str, Any]]) -> float:
    """Σup / Σ(up+down) of rows: the test's own roll-up."""
    up = sum(r["up_s"] for r in rows)
    return up / (up + sum(r["down_s"] for r in rows))


# -- a real run record ------------------------------------------------------------------


def device_day_rows(batches: list[str]) -> list[dict[str, Any]]:
    """Stand-in step: one row per batch."""
    return [{"batch_id": b, "rows": 10} for b in batches]


@gate("device_day_rows", reason="rows must be positive")
def rows_positive(value: list[dict[str, Any]]) -> list[bool]:
    return [r["rows"] > 0 for r in value]


def write_run_record(
    runs_dir: Path, run_id: str, batches: list[str], status: str = "ok", message: str = ""
) -> Path:
    """A run record in consolidation's envelope around the record of a tiny real pipeline
    with a gate (tests/test_report_e2e.py reads the one consolidation itself writes)."""
    import json

    p = Pipeline([device_day_rows], gates=[rows_positive], name="consolidate")
    dag = p.run({"batches": batches}, run_id=run_id).record.to_dict()
    record = {
        "run_id": run_id,
        "started_at": dag["started_at"],
        "engine": "duckdb",
        "status": status,
        "inputs": {
            "sources": {"registry": {"path": "/src/registry.csv", "sha256": "ab" * 32}},
            "new_batches": [
                {"batch_id": b, "gateway_id": b.rsplit("-", 1)[0], "sha256": "cd" * 32, "rows": 10}
                for b in batches
            ],
        },
        "plan": {"mode": "full", "days": [d.isoformat() for d in DAYS]},
        "pipeline": dag,
        "published": [{"table": "device_day", "version": 0, "rows": 72, "predicate": None}],
        "message": message or f"consolidated {len(batches)} new batch(es) (full)",
        "duration_s": 1.25,
    }
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{run_id}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


# -- headless Chromium ---------------------------------------------------------------------


def chromium() -> str | None:
    """The Chromium binary, if installed (Debian package ``chromium``)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, profile: Path, size: tuple[int, int] = (1400, 2400)) -> None:
    """Render ``html`` headless to ``png``; no network (file:// only, background fetches off)."""
    binary = chromium()
    assert binary is not None
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={size[0]},{size[1]}",
        html.resolve().as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and png.exists(), done.stderr[-2000:]


# -- gold from the simulator's ground truth -------------------------------------------------


def gold_from_sim(sim_dir: Path) -> dict[str, pa.Table]:
    """Gold-shaped tables from ``sim.prepare`` output: up/down from truth (not measured),
    site and cell from the registry, firmware from the installs, alerts from the Avro file,
    connectivity modelled as 1 - the scenario's message loss. For the report's story, not for
    accuracy: consolidation computes the real tables from the messages."""
    import csv
    import json
    from datetime import UTC, datetime

    import fastavro
    import pyarrow.parquet as pq

    with (sim_dir / "registry.csv").open(newline="") as f:
        registry = {r["device_id"]: r for r in csv.DictReader(f)}
    scenario = json.loads((sim_dir / "truth" / "scenario.json").read_text())
    loss = scenario["special_devices"]["lossy"]
    installs: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    with (sim_dir / "firmware_versions.avro").open("rb") as f:
        for rec in fastavro.reader(f):
            installs[rec["device_id"]].append((rec["installed_at"], rec["firmware_version"]))
    with (sim_dir / "alerts.avro").open("rb") as f:
        alerts = list(fastavro.reader(f))
    truth = pq.read_table(sim_dir / "truth" / "device_day.parquet").to_pylist()
    dd = []
    for r in truth:
        dev, day = r["device_id"], r["day"]
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        ran = sorted(installs[dev])
        version = next((v for at, v in reversed(ran) if at < end), None)
        reg = registry[dev]
        dd.append(
            {
                "day": day,
                "device_id": dev,
                "site": reg["site"],
                "geohash5": pygeohash.encode(float(reg["lat"]), float(reg["lon"]), 5),
                "firmware_version": version,
                "up_s": float(r["up_s"]),
                "down_s": float(r["down_s"]),
                "eligible_s": float(r["up_s"]) + float(r["down_s"]),
                "unknown_s": 0.0,
                "device_uptime": r["device_uptime"],
                "connectivity_ratio": 1.0 - loss.get(dev, 0.0),
                "alert_count": sum(
                    a["device_id"] == dev
                    and a["raised_at"] < end
                    and (a["cleared_at"] is None or a["cleared_at"] > start)
                    for a in alerts
                ),
            }
        )
    fw_rows = pq.read_table(sim_dir / "truth" / "firmware_day.parquet").to_pylist()
    devices_on: dict[tuple[Any, str], int] = defaultdict(int)
    for r in dd:
        devices_on[(r["day"], r["firmware_version"])] += 1
    firmware_day = [
        {
            **r,
            "devices": devices_on[(r["day"], r["firmware_version"])],
            "device_uptime": r["uptime"],
        }
        for r in fw_rows
    ]
    fleet_day = _rollup(dd, ["day"], "fleet_uptime")
    for r in fleet_day:
        r["uptime_target"] = TARGET
    return {
        "device_day": pa.Table.from_pylist(dd),
        "fleet_day": pa.Table.from_pylist(fleet_day),
        "firmware_day": pa.Table.from_pylist(firmware_day),
        "site_day": pa.Table.from_pylist(_rollup(dd, ["day", "site"], "device_uptime")),
        "geo_day": pa.Table.from_pylist(_rollup(dd, ["day", "geohash5"], "device_uptime")),
    }
