"""Peak RSS of the DAG worker for N readings of one day (by hand; not collected by pytest).

    .venv/bin/python -m tests.measure_dag_rss 100000 300000 600000

Fills a real buffer (agent/buffer.py) with N readings of 2026-01-01 from N / 2880 devices
(one message per 30 s, as the fleet of docs/agent.md "Memory"), a registry and one
observation interval for the whole day, then runs ``python -m agent.worker dag`` — the
function the agent's ``serve`` worker runs — under ``/usr/bin/time -v`` with pandas hidden
and Arrow on the system allocator, as on a gateway. Prints N, devices, peak RSS, seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.buffer import Buffer

DAY0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PER_DEVICE = 2880  # one reading per 30 s for a day
_NO_PANDAS = """
import importlib.abc, sys

class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden, as on a gateway)")

sys.meta_path.insert(0, _NoPandas())
"""


def fill(db: Path, registry: Path, n: int) -> int:
    devices = max(1, n // PER_DEVICE)
    buf = Buffer.open(db)
    conn = buf.conn
    conn.execute("BEGIN")
    rows = (
        (DAY0_MS + (i // devices) * 30_000 + (i % devices) * 7, f"dev-{i % devices:04d}",
         "telemetry", i // devices, "site-1", DAY0_MS + (i // devices) * 30_000 + 500)
        for i in range(n)
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO readings (ts_ms, device_id, kind, seq, site, received_ms, metrics)"
        " VALUES (?,?,?,?,?,?,'{\"t\": 21.5}')",
        rows,
    )
    conn.execute(
        "INSERT INTO observations (start_ms, end_ms, alive_ms, closed_by)"
        " VALUES (?, ?, ?, 'shutdown')",
        (DAY0_MS - 3_600_000, DAY0_MS + 86_400_000 + 3_600_000, DAY0_MS + 90_000_000),
    )
    conn.execute("COMMIT")
    buf.close()
    registry.write_text(
        "device_id,site,heartbeat_s\n" + "".join(f"dev-{d:04d},site-1,30\n" for d in range(devices))
    )
    return devices


def measure(n: int, tmp: Path) -> dict[str, object]:
    db, registry = tmp / f"agent-{n}.sqlite3", tmp / f"registry-{n}.csv"
    if not db.exists():
        fill(db, registry, n)
    run_db = tmp / "run.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run_db}{suffix}").unlink(missing_ok=True)
    shutil.copy(db, run_db)
    site = tmp / "gateway-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_NO_PANDAS)
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(root)])
    env.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    out = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "agent.worker", "dag", "--db", str(run_db),
         "--gateway", "gw1", "--gap-k", "2.5", "--registry", str(registry),
         "--now-ms", str(DAY0_MS + 2 * 86_400_000)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)[1])  # type: ignore[index]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "readings": n,
        "devices": max(1, n // PER_DEVICE),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        **{k: answer.get(k) for k in ("rows", "window_rows", "chunks", "duration_s")},
    }


def main(argv: list[str]) -> None:
    keep = os.environ.get("DAG_RSS_DIR")
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="dag-rss-"))
    tmp.mkdir(parents=True, exist_ok=True)
    for n in [int(a) for a in argv] or [100_000, 300_000, 600_000]:
        print(json.dumps(measure(n, tmp)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
