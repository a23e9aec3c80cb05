"""Run one consolidation implementation on prepared data in a fresh process and report.

``python -m bench.consolidate_worker IMPL ROOT OUT`` prints one JSON line: wall seconds,
peak RSS of the process tree (the JVM included for Spark), rows in. The gold device_day
goes to ``OUT/device_day.parquet`` so the benchmark can check the baselines agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq


class PeakRss:
    """Polls the RSS of this process and its children; keeps the largest sum seen."""

    def __init__(self, every: float = 0.1) -> None:
        self.peak = 0
        self.every = every
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self) -> PeakRss:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _inputs(root: Path) -> dict[str, Any]:
    from central.consolidate.sources import (
        LedgerSource,
        batches_table,
        read_alerts,
        read_firmware,
        read_registry,
    )

    meta = json.loads((root / "meta.json").read_text())
    data = root / "data"
    landed = LedgerSource(
        f"sqlite:///{(data / 'ledger.sqlite3').absolute()}", str(data / "landing")
    ).landed_batches()
    return {
        "files": [b.path for b in landed],
        "batches": batches_table(landed),
        "registry": read_registry(root / "src" / "registry.csv"),
        "firmware": read_firmware(root / "src" / "firmware"),
        "alerts": read_alerts(root / "src" / "alerts.avro"),
        "days": [date.fromisoformat(d) for d in meta["days"]],
        "rows": meta["rows"],
        "config": root / "central.toml",
    }


def _ibis(engine_name: str, inp: dict[str, Any], spark: Any = None) -> dict[str, pa.Table]:
    from central.consolidate import engine as E
    from central.consolidate.compute import run_dag
    from central.consolidate.dag import GOLD_TABLES, KpiSettings
    from central.consolidate.sources import BATCH_COLUMNS

    # DuckDB spills past this ([consolidate] duckdb_memory_limit); None = 80 % of RAM
    limit = inp.get("memory_limit") or os.environ.get("FLEETPULSE_BENCH_DUCKDB_MEMORY") or None
    eng = E.connect(engine_name, spark=spark, work_dir=Path(inp["out"]), duckdb_memory_limit=limit)
    try:
        res = run_dag(
            eng,
            landed=eng.read_parquet(inp["files"], BATCH_COLUMNS),
            batches=inp["batches"],
            days=inp["days"],
            settings=KpiSettings(),
            sources={k: inp[k] for k in ("registry", "firmware", "alerts")},
        )
        return {n: res[n] for n in GOLD_TABLES}
    finally:
        eng.close()


def main(argv: list[str]) -> int:
    impl, root, out = argv[0], Path(argv[1]), Path(argv[2])
    # "ibis-duckdb@1500MB": the same with DuckDB's memory_limit set
    impl, _, memory_limit = impl.partition("@")
    out.mkdir(parents=True, exist_ok=True)
    inp = _inputs(root)
    inp["out"] = str(out)
    inp["memory_limit"] = memory_limit
    # imports are not part of the figure (Ibis and PySpark take a second or two)
    import central.consolidate.compute
    import central.consolidate.runner  # noqa: F401

    spark = None
    if impl == "ibis-spark":
        from central.consolidate.engine import spark_session

        spark = spark_session(
            "local[2]",
            {
                "spark.driver.memory": "6g",
                "spark.sql.shuffle.partitions": "8",
                "spark.sql.warehouse.dir": str(out / "spark-warehouse"),
                "spark.local.dir": str(out / "spark-tmp"),
            },
        )
    with PeakRss() as rss:
        t0 = time.perf_counter()
        if impl in ("ibis-duckdb", "ibis-spark"):
            tables = _ibis(impl.removeprefix("ibis-"), inp, spark)
            device_day = tables["device_day"]
        elif impl == "sql-duckdb":
            from bench.consolidate_sql import run

            device_day = run(
                inp["files"],
                inp["batches"],
                inp["registry"],
                inp["firmware"],
                inp["alerts"],
                inp["days"],
            )["device_day"]
        elif impl == "pandas":
            from bench.consolidate_pandas import run as run_pandas

            frames = run_pandas(
                inp["files"],
                inp["batches"],
                inp["registry"],
                inp["firmware"],
                inp["alerts"],
                inp["days"],
            )
            device_day = pa.Table.from_pandas(frames["device_day"], preserve_index=False)
        elif impl == "cli-duckdb":
            from central.config import load_config
            from central.consolidate.runner import consolidate

            consolidate(load_config(inp["config"], {}), full=True)
            from deltalake import DeltaTable

            device_day = DeltaTable(str(root / "data" / "gold" / "device_day")).to_pyarrow_table()
        else:
            raise SystemExit(f"unknown implementation {impl!r}")
        wall = time.perf_counter() - t0
    if spark is not None:
        spark.stop()
    pq.write_table(device_day, out / "device_day.parquet")
    print(
        json.dumps(
            {
                "impl": impl,
                "wall_s": wall,
                "peak_rss_mib": rss.peak / 2**20,
                "rows": inp["rows"],
                "device_days": device_day.num_rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
