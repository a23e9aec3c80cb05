"""Agent ↔ central helpers of the fault suite: a real ``central serve``, agent configs that
upload to it, and the counts the scenarios compare (agent buffer, landing store, ledger, gold).

Keys are compared as (device_id, kind, ts_ms, seq), DESIGN §3's dedup key.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.agent_support import AgentProcess, query
from tests.agent_upload_support import agent_config, landed_readings
from tests.brokers import free_port
from tests.central_support import CentralServer, create_token
from tests.central_support import write_config as central_config

ROOT = Path(__file__).resolve().parents[2]
Key = tuple[str, str, int, int]


@contextlib.contextmanager
def env_var(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (children started in it inherit it)."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class GroupAgentProcess(AgentProcess):
    """``fleetpulse agent run`` in its own process group, killed with its children.

    The agent's export worker is a child process. When the agent dies, systemd (the
    shipped unit, default ``KillMode=control-group``) kills what is left of the unit before
    it restarts it; ``kill_group`` does the same, so a restart never meets an orphaned
    worker still holding the buffer's write lock.
    """

    def start(self) -> GroupAgentProcess:
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.log, "ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetpulse", "agent", "run", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    def kill_group(self) -> None:
        """SIGKILL the agent and every process left in its group (its export worker)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class Central:
    """A real ``fleetpulse central serve`` with its data dir, config and one gateway token."""

    server: CentralServer
    config: Path
    data: Path
    token_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self, fault: str | None = None) -> None:
        """SIGKILL (if running) and start again, with ``FLEETPULSE_FAULT=fault`` if given."""
        self.server.kill()
        with env_var("FLEETPULSE_FAULT", fault):
            self.server.start()


def start_central(tmp: Path, gateway_id: str, fault: str | None = None) -> Central:
    """``central serve`` on a free port, ``FLEETPULSE_FAULT=fault`` armed if given."""
    port = free_port()
    data = tmp / "central"
    config = central_config(tmp / "central.toml", data, port)
    token_file = tmp / "gateway-token"
    token_file.write_text(create_token(config, gateway_id) + "\n")
    with env_var("FLEETPULSE_FAULT", fault):
        server = CentralServer(config, port, tmp / "central.log").start()
    return Central(server, config, data, token_file)


def uploading_agent_config(
    tmp: Path,
    mqtt_port: int,
    url: str,
    token_file: Path,
    gateway_id: str,
    *,
    central: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
) -> Path:
    """An agent TOML uploading to ``url`` with the gateway token in ``token_file``."""
    return agent_config(
        tmp,
        url=url,
        token=token_file.read_text().strip(),
        mqtt_port=mqtt_port,
        gateway_id=gateway_id,
        central=central or {},
        schedule=schedule or {},
    )


def agent_keys(db: Path) -> list[Key]:
    """Every reading committed in the agent's buffer (duplicates kept: there must be none)."""
    rows = query(db, "SELECT device_id, kind, ts_ms, seq FROM readings")
    return [(str(d), str(k), int(t), int(s)) for d, k, t, s in rows]


def landed_keys(central_data: Path) -> list[Key]:
    """Every reading row in central's landing store, duplicates kept."""
    return [(str(d), str(k), int(t), int(s)) for d, k, t, s in landed_readings(central_data)]


def ledger_rows(central_data: Path) -> list[tuple[str, str]]:
    """(batch_id, landing_path) of every batch in central's ledger."""
    conn = sqlite3.connect(f"file:{central_data / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        return [(str(b), str(p)) for b, p in conn.execute(
            "SELECT batch_id, landing_path FROM batches ORDER BY batch_id")]  # fmt: skip
    finally:
        conn.close()


def landing_files(central_data: Path) -> list[Path]:
    """Batch files under the landing root (temp files and strays excluded)."""
    root = central_data / "landing"
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def drained(db: Path) -> bool:
    """Every committed reading is in a batch central acknowledged (none flagged)."""
    rows = query(
        db,
        "SELECT (SELECT coalesce(max(id), 0) FROM readings),"
        " (SELECT coalesce(max(last_id), 0) FROM batches WHERE state = 'uploaded'),"
        " (SELECT count(*) FROM batches WHERE state != 'uploaded')",
    )
    if not rows:
        return False
    last, uploaded, open_batches = rows[0]
    return bool(last > 0 and uploaded >= last and open_batches == 0)


def uploaded_readings(db: Path) -> int:
    """Readings in batches central acknowledged (the agent's own count)."""
    rows = query(db, "SELECT coalesce(sum(readings), 0) FROM batches WHERE state = 'uploaded'")
    return int(rows[0][0]) if rows else 0


def batch_states(db: Path) -> Counter[str]:
    return Counter({str(s): int(n) for s, n in query(
        db, "SELECT state, count(*) FROM batches GROUP BY state")})  # fmt: skip


def consolidate(config: Path) -> subprocess.CompletedProcess[str]:
    """``fleetpulse central consolidate`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", "central", "consolidate", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


@dataclass
class GoldCount:
    """What gold ``device_day`` says about the readings: per-key duplicates and the sum."""

    rows: int
    duplicate_keys: int  # (day, device_id) appearing more than once
    readings: int  # Σ readings: every deduplicated reading once
    per_device_day: dict[tuple[str, str], int]


def gold_device_day(central_data: Path) -> GoldCount:
    from deltalake import DeltaTable

    t = DeltaTable(str(central_data / "gold" / "device_day")).to_pyarrow_table(
        columns=["day", "device_id", "readings"]
    )
    days = [str(d) for d in t["day"].to_pylist()]
    devices = [str(d) for d in t["device_id"].to_pylist()]
    counts = [int(n or 0) for n in t["readings"].to_pylist()]
    keys = Counter(zip(days, devices, strict=True))
    per: dict[tuple[str, str], int] = {}
    for key, n in zip(zip(days, devices, strict=True), counts, strict=True):
        per[key] = per.get(key, 0) + n
    return GoldCount(
        rows=t.num_rows,
        duplicate_keys=sum(c - 1 for c in keys.values() if c > 1),
        readings=sum(counts),
        per_device_day=per,
    )


def expected_per_device_day(keys: set[Key]) -> dict[tuple[str, str], int]:
    """Readings per (UTC day, device) from the keys' event times (no skew in these tests)."""
    import datetime as dt

    out: dict[tuple[str, str], int] = {}
    for device, _, ts, _ in keys:
        day = dt.datetime.fromtimestamp(ts / 1000, tz=dt.UTC).date().isoformat()
        out[(day, device)] = out.get((day, device), 0) + 1
    return out


def rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of the process, RSS of its children summed), MiB."""
    try:
        proc = psutil.Process(pid)
        own = proc.memory_info().rss
        kids = 0
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kids += child.memory_info().rss
    except psutil.Error:
        return 0.0, 0.0
    return own / 2**20, kids / 2**20
