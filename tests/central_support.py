"""Helpers for the central tests: batch builders, config files, a real ``central serve`` process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.batch import BATCH_SCHEMA, PARQUET_WRITE_OPTIONS, batch_metadata
from tests.brokers import free_port

REPO = Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def batch_rows(
    gateway_id: str, n: int, start_ms: int = T0_MS, step_ms: int = 30_000
) -> dict[str, list[Any]]:
    """``n`` telemetry readings of one gateway, 30 s apart, as column lists."""
    cols: dict[str, list[Any]] = {f.name: [None] * n for f in BATCH_SCHEMA}
    cols["record_type"] = ["reading"] * n
    cols["gateway_id"] = [gateway_id] * n
    cols["device_id"] = [f"dev-{i % 7}" for i in range(n)]
    cols["site"] = ["site-a"] * n
    cols["kind"] = ["telemetry"] * n
    cols["ts"] = [start_ms + i * step_ms for i in range(n)]
    cols["seq"] = list(range(n))
    cols["received_at"] = [start_ms + i * step_ms + 50 for i in range(n)]
    cols["fw"] = ["1.2.3"] * n
    cols["metrics"] = [[("temp", 20.0 + i % 5)] for i in range(n)]
    return cols


def kpi_cols(
    gateway_id: str,
    n: int,
    kpis: int,
    day_ms: int = T0_MS,
    up_s: float = 600.0,
    computed_ms: int = T0_MS + 3_600_000,
) -> dict[str, list[Any]]:
    """``n`` readings plus ``kpis`` agent KPI rows (schema v2, one per device) of one day."""
    from datetime import UTC, datetime

    cols = batch_rows(gateway_id, n)
    day = datetime.fromtimestamp(day_ms / 1000, UTC).date()
    kpi = {f.name: [None] * kpis for f in BATCH_SCHEMA}
    kpi |= {
        "record_type": ["kpi"] * kpis,
        "gateway_id": [gateway_id] * kpis,
        "device_id": [f"dev-{i}" for i in range(kpis)],
        "site": ["site-a"] * kpis,
        "ts": [day_ms] * kpis,
        "day": [day] * kpis,
        "eligible_s": [86_400.0] * kpis,
        "up_s": [up_s] * kpis,
        "down_s": [86_400.0 - up_s] * kpis,
        "unknown_s": [0.0] * kpis,
        "device_uptime": [up_s / 86_400.0] * kpis,
        "connectivity_ratio": [0.5] * kpis,
        "slots_counted": [2880] * kpis,
        "slots_holding": [1440] * kpis,
        "computed_at": [computed_ms] * kpis,
    }
    return {k: v + kpi[k] for k, v in cols.items()}


def make_batch(
    gateway_id: str,
    seq: int,
    n: int = 20,
    start_ms: int = T0_MS,
    *,
    cols: Mapping[str, list[Any]] | None = None,
    metadata: Mapping[bytes, bytes] | None = None,
    schema: pa.Schema = BATCH_SCHEMA,
    **write_options: Any,
) -> bytes:
    """A Parquet batch exactly as the contract says (override pieces to make bad ones)."""
    data = dict(batch_rows(gateway_id, n, start_ms) if cols is None else cols)
    table = pa.table({f.name: data[f.name] for f in schema}, schema=schema)
    meta = batch_metadata(gateway_id, seq) if metadata is None else dict(metadata)
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, **{**PARQUET_WRITE_OPTIONS, **write_options})
    return buf.getvalue()


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def put(
    client: httpx.Client,
    bid: str,
    body: bytes,
    token: str | None,
    digest: str | None = "auto",
    **headers: str,
) -> httpx.Response:
    hdrs = dict(headers)
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if digest == "auto":
        hdrs["Content-SHA256"] = sha(body)
    elif digest is not None:
        hdrs["Content-SHA256"] = digest
    return client.put(f"/v1/batches/{bid}", content=body, headers=hdrs)


def write_config(path: Path, data_dir: Path, port: int | None = None, **keys: Any) -> Path:
    lines = [f'data_dir = "{data_dir}"', f'listen = "127.0.0.1:{port or free_port()}"']
    for k, v in keys.items():
        lines.append(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``fleetpulse ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def create_token(config: Path, gateway_id: str) -> str:
    res = cli("central", "token", "create", gateway_id, "--config", str(config))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


class CentralServer:
    """``fleetpulse central serve`` in a subprocess on a free loopback port."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> CentralServer:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleetpulse",
                    "central",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"central serve exited {self.proc.returncode}: {self.log.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"central serve not healthy after {timeout} s: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> CentralServer:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def central_server(tmp_path: Path) -> Iterator[CentralServer]:
    """A real ``fleetpulse central serve`` with data in ``tmp_path/central``."""
    port = free_port()
    config = write_config(
        tmp_path / "central.toml",
        tmp_path / "central",
        port,
        max_batch_bytes=1024 * 1024,
        max_batch_rows=100_000,
        max_decompressed_bytes=16 * 1024 * 1024,
    )
    server = CentralServer(config, port, tmp_path / "central.log").start()
    try:
        yield server
    finally:
        server.stop()
