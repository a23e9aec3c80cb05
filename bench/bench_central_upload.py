"""Central ingest: uploads/s, MB/s and latency for 1 MiB batches, 4 concurrent clients, loopback.

A real ``fleetpulse central serve`` subprocess (SQLite ledger, local landing store with
fsync) and 4 httpx clients in threads of this process, all on the same machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.batch import BATCH_SCHEMA, PARQUET_WRITE_OPTIONS, batch_id, batch_metadata

CLIENTS = 4
PER_CLIENT = 60
TARGET_BYTES = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _table(gateway_id: str, n: int) -> pa.Table:
    rng = random.Random(gateway_id)
    t0 = 1_767_225_600_000
    # readings only: the v2 kpi columns (and the reading columns not set here) stay null
    cols: dict[str, list[Any]] = {f.name: [None] * n for f in BATCH_SCHEMA}
    cols |= {
        "record_type": ["reading"] * n,
        "gateway_id": [gateway_id] * n,
        "device_id": [f"dev-{rng.randrange(500):04d}" for _ in range(n)],
        "site": [f"site-{rng.randrange(20)}" for _ in range(n)],
        "kind": ["telemetry"] * n,
        "ts": [t0 + i * 1000 + rng.randrange(1000) for i in range(n)],
        "seq": [rng.randrange(1 << 40) for _ in range(n)],
        "received_at": [t0 + i * 1000 + 1500 for i in range(n)],
        "fw": ["1.4.2"] * n,
        "lat": [rng.uniform(-90, 90) for _ in range(n)],
        "lon": [rng.uniform(-180, 180) for _ in range(n)],
        "metrics": [[("temp", rng.random()), ("rssi", rng.random())] for _ in range(n)],
    }
    return pa.table(cols, schema=BATCH_SCHEMA)


def _write(table: pa.Table, gateway_id: str, seq: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(
        table.replace_schema_metadata(batch_metadata(gateway_id, seq)), buf, **PARQUET_WRITE_OPTIONS
    )
    return buf.getvalue()


def _one_mib_table(gateway_id: str) -> pa.Table:
    n = 20_000
    size = len(_write(_table(gateway_id, n), gateway_id, 0))
    return _table(gateway_id, int(n * TARGET_BYTES / size))


def _token(config: Path, gateway_id: str) -> str:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetpulse",
            "central",
            "token",
            "create",
            gateway_id,
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return res.stdout.strip().splitlines()[-1]


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-central-") as tmp:
        root = Path(tmp)
        port = _free_port()
        config = root / "central.toml"
        config.write_text(f'data_dir = "{root / "data"}"\nlisten = "127.0.0.1:{port}"\n')
        gateways = [f"bench-gw-{i}" for i in range(CLIENTS)]
        tokens = {gw: _token(config, gw) for gw in gateways}
        batches = {}
        for gw in gateways:
            table = _one_mib_table(gw)
            batches[gw] = [_write(table, gw, s) for s in range(1, PER_CLIENT + 1)]
        sizes = [len(b) for bs in batches.values() for b in bs]

        log = open(root / "central.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "central", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/v1/healthz", timeout=1).status_code == 200:
                        break
                time.sleep(0.05)
            latencies: list[float] = []
            statuses: list[int] = []
            lock = threading.Lock()
            start = threading.Barrier(CLIENTS + 1)

            def client(gw: str) -> None:
                with httpx.Client(base_url=url, timeout=60) as c:
                    # open the keep-alive connection first, as a running agent already has
                    c.get("/v1/healthz").raise_for_status()
                    start.wait()
                    for s, body in enumerate(batches[gw], start=1):
                        digest = hashlib.sha256(body).hexdigest()
                        t = time.perf_counter()
                        r = c.put(
                            f"/v1/batches/{batch_id(gw, s)}",
                            content=body,
                            headers={
                                "Authorization": f"Bearer {tokens[gw]}",
                                "Content-SHA256": digest,
                            },
                        )
                        dt = time.perf_counter() - t
                        with lock:
                            latencies.append(dt)
                            statuses.append(r.status_code)

            threads = [threading.Thread(target=client, args=(gw,)) for gw in gateways]
            for th in threads:
                th.start()
            start.wait()
            t0 = time.perf_counter()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()

    ok = statuses.count(201)
    if ok != len(sizes):
        raise RuntimeError(f"expected {len(sizes)} x 201, got statuses {sorted(set(statuses))}")
    lat = sorted(latencies)
    p = statistics.quantiles(lat, n=100)
    mb = sum(sizes) / 1e6
    return "\n".join(
        [
            "## Central ingest upload",
            "",
            f"{len(sizes)} uploads of Parquet batches of {statistics.mean(sizes) / 2**20:.2f} MiB "
            f"(zstd, page checksums) by {CLIENTS} concurrent clients to a real "
            "`fleetpulse central serve` on 127.0.0.1 (SQLite ledger, local landing store with "
            "fsync; full validation incl. page checksums). Clients and server share the machine.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| uploads/s | {len(sizes) / wall:.1f} |",
            f"| MB/s (body bytes) | {mb / wall:.1f} |",
            f"| latency p50 | {p[49] * 1000:.0f} ms |",
            f"| latency p99 | {p[98] * 1000:.0f} ms |",
            f"| latency max | {lat[-1] * 1000:.0f} ms |",
            f"| wall time | {wall:.1f} s |",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
