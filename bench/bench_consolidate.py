"""Benchmark: central consolidation of 1M and 10M generated readings (1,000 devices, 30 s).

The Ibis pipeline on DuckDB against two baselines doing the same fan-in (a hand-written
DuckDB SQL script, vectorised pandas), plus Spark local mode and the whole CLI run (plan,
DAG, gates, Delta publish). Each run is a fresh process; peak RSS is the process tree's.
The baselines' device_day must equal the pipeline's (1e-6) or no figure is reported.
Data is generated once into ``$FLEETPULSE_BENCH_DIR`` (default /tmp/fleetpulse-bench).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
BASE = Path(os.environ.get("FLEETPULSE_BENCH_DIR", "/tmp/fleetpulse-bench"))
DEVICES = 1000
SCALES = {"1M": 1_000_000, "10M": 10_000_000}
REPEATS = {"1M": 3, "10M": 2}
# DuckDB memory_limit of the extra run that shows the RSS bound ([consolidate] setting)
LIMITED = "1500MB"
COMPARED = (
    "up_s",
    "down_s",
    "unknown_s",
    "device_uptime",
    "connectivity_ratio",
    "alert_count",
    "alert_down_s",
    "readings",
)


def prepare(label: str, target_rows: int) -> Path:
    """Generate and land the data once (ledger, landing files, registry, Avro sources)."""
    sys.path.insert(0, str(REPO))
    from tests.consolidate_support import (
        land,
        make_fleet,
        split_batches,
        write_config,
        write_sources,
    )

    root = BASE / label
    if (root / "meta.json").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    # outages, loss and 60 s devices remove ~5 % of heartbeats, duplicates and statuses add ~3 %
    hours = target_rows / DEVICES / 120 / 0.975
    fleet = make_fleet(n_devices=DEVICES, hours=hours, n_gateways=10, seed=42, batch_hours=6)
    data = root / "data"
    data.mkdir(parents=True)
    land(data, split_batches(fleet))
    write_config(root, data, write_sources(root / "src", fleet))
    readings = fleet.batch.num_rows
    (root / "meta.json").write_text(
        json.dumps({"rows": readings, "days": [d.isoformat() for d in fleet.days], "hours": hours})
    )
    return root


def measure(impl: str, root: Path) -> dict[str, Any]:
    out = root / "out" / impl
    shutil.rmtree(out, ignore_errors=True)
    if impl == "cli-duckdb":
        shutil.rmtree(root / "data" / "gold", ignore_errors=True)
        shutil.rmtree(root / "data" / "consolidation", ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.consolidate_worker", impl, str(root), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        return {"impl": impl, "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["out"] = str(out / "device_day.parquet")
    result["measured_at"] = time.strftime("%H:%M", time.gmtime())
    return result


def agree(a_path: str, b_path: str) -> str | None:
    """None if two device_day files agree on the KPI columns, else the first difference."""
    a = pq.read_table(a_path).to_pandas().sort_values(["day", "device_id"]).reset_index(drop=True)
    b = pq.read_table(b_path).to_pandas().sort_values(["day", "device_id"]).reset_index(drop=True)
    if len(a) != len(b):
        return f"{len(a)} rows vs {len(b)}"
    if list(a.device_id) != list(b.device_id):
        return "different device-days"
    for col in COMPARED:
        for i, (x, y) in enumerate(zip(a[col], b[col], strict=True)):
            nx = x is None or (isinstance(x, float) and math.isnan(x))
            ny = y is None or (isinstance(y, float) and math.isnan(y))
            if nx != ny or (not nx and abs(float(x) - float(y)) > 1e-6):
                return f"{col} row {i} ({a.device_id[i]} {a.day[i]}): {x} vs {y}"
    return None


def run() -> str:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    plan = {
        "1M": ["ibis-duckdb", "sql-duckdb", "pandas", "ibis-spark"],
        "10M": [
            "ibis-duckdb",
            "sql-duckdb",
            "pandas",
            "cli-duckdb",
            "ibis-spark",
            f"ibis-duckdb@{LIMITED}",
        ],
    }
    only = os.environ.get("FLEETPULSE_BENCH_IMPLS")
    for label, rows in SCALES.items():
        root = prepare(label, rows)
        results[label] = {}
        for impl in plan[label]:
            if only and impl not in only.split(","):
                continue
            # the machine is shared: the best of a few runs is the figure, all are kept
            runs = []
            once = impl in ("cli-duckdb", "ibis-spark") or "@" in impl
            for _ in range(1 if once else REPEATS[label]):
                print(f"   {label} {impl} ...", file=sys.stderr, flush=True)
                runs.append(measure(impl, root))
                print(f"   {runs[-1]}", file=sys.stderr, flush=True)
            ok = [r for r in runs if "wall_s" in r]
            if ok:
                best = dict(min(ok, key=lambda r: r["wall_s"]))
                best["all_wall_s"] = [round(r["wall_s"], 1) for r in ok]
                best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
                results[label][impl] = best
            else:
                results[label][impl] = runs[-1]
    if only and (BASE / "results.json").exists():
        # a partial re-run keeps the other implementations' figures
        previous = json.loads((BASE / "results.json").read_text())
        for label, by_impl in results.items():
            previous.setdefault(label, {}).update(by_impl)
        results = previous
    (BASE / "results.json").write_text(json.dumps(results, indent=2))
    return report(results)


def report(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "## Central consolidation (issue 5)",
        "",
        "Generated fleet: 1,000 devices, 30 s heartbeat (5 % at 60 s), 10 gateways, random "
        "outages with LWT offline and boot events, lossy links, roaming devices, 3 % of "
        "readings uploaded twice; firmware updates and alerts from Avro. Every run starts from "
        "the landed Parquet batches and produces the gold tables; `cli-duckdb` is the whole "
        "`fleetpulse central consolidate --full` (plan, DAG, gates, Delta publish, state) with "
        f"the default config (DuckDB memory_limit {LIMITED}); the `ibis-duckdb` rows run "
        "DuckDB unlimited. "
        "Peak RSS is the process tree's (the JVM included for Spark). The machine (2 cores) "
        "was shared with four other engineers' test runs, whose load changed from minute to "
        "minute: each DuckDB/pandas figure is the best of several runs, all listed; Spark and "
        "the CLI ran once. Compare ratios between rows measured at about the same time.",
        "",
        "| data | implementation | readings | wall s (best) | all runs s | rows/s | "
        "peak RSS MiB | vs Ibis | device_day agrees | at (UTC) |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for label, by_impl in results.items():
        ibis = by_impl.get("ibis-duckdb", {})
        for impl, r in by_impl.items():
            if "error" in r:
                lines.append(f"| {label} | {impl} | | failed: {r['error'][0][:80]} | | | | | | |")
                continue
            ratio = r["wall_s"] / ibis["wall_s"] if ibis.get("wall_s") else float("nan")
            same = (
                "(reference)"
                if impl == "ibis-duckdb"
                else (agree(ibis["out"], r["out"]) or "yes")
                if "out" in ibis
                else "?"
            )
            runs = ", ".join(f"{x:.1f}" for x in r.get("all_wall_s", [r["wall_s"]]))
            lines.append(
                f"| {label} | {impl} | {r['rows']:,} | {r['wall_s']:.1f} | {runs} | "
                f"{r['rows'] / r['wall_s']:,.0f} | {r['peak_rss_mib']:.0f} | {ratio:.2f}x | "
                f"{same} | {r.get('measured_at', '?')} |"
            )
    lines.append("")
    i1, i10 = results.get("1M", {}).get("ibis-duckdb"), results.get("10M", {}).get("ibis-duckdb")
    if i1 and i10 and "wall_s" in i1 and "wall_s" in i10:
        growth = i10["wall_s"] / i1["wall_s"]
        lines.append(
            f"Cost growth of the Ibis pipeline on DuckDB from 1M to 10M readings: {growth:.1f}x "
            f"for {i10['rows'] / i1['rows']:.1f}x the data (target ≤ 11x); peak RSS at 10M "
            f"{i10['peak_rss_mib']:.0f} MiB with DuckDB's default memory limit (80 % of RAM; "
            f"target ≤ 2048)."
        )
        lim = results["10M"].get(f"ibis-duckdb@{LIMITED}", {})
        if "wall_s" in lim:
            lines.append(
                f'With `[consolidate] duckdb_memory_limit = "{LIMITED}"` DuckDB spills to disk: '
                f"peak RSS {lim['peak_rss_mib']:.0f} MiB, {lim['wall_s']:.1f} s "
                f"({lim['wall_s'] / i10['wall_s']:.2f}x the unlimited run)."
            )
        s10 = results["10M"].get("sql-duckdb", {})
        if "wall_s" in s10:
            lines.append(
                f"Ibis pipeline vs the hand-written DuckDB SQL at 10M: "
                f"{i10['wall_s'] / s10['wall_s']:.2f}x its time (target ≤ 1.3x)."
            )
        p10 = results["10M"].get("pandas", {})
        if "wall_s" in p10:
            lines.append(
                f"pandas at 10M: {p10['wall_s'] / i10['wall_s']:.2f}x the Ibis/DuckDB time, "
                f"{p10['peak_rss_mib'] / i10['peak_rss_mib']:.2f}x its peak RSS."
            )
    return "\n".join(lines) + "\n"
