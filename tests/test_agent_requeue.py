"""``fleetpulse agent batches`` and ``agent requeue`` against the real central: a batch
flagged for a reason an operator fixed goes back to the queue and lands once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from agent.config import AgentConfig
from tests.agent_upload_support import (
    add_readings,
    agent_config,
    batches,
    cfg_of,
    ledger,
    reading_row,
)
from tests.central_support import CentralServer, central_server, create_token, write_config

__all__ = ["central_server"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agent", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip


def kpi_rows_shipped(cfg: AgentConfig) -> int:
    """The local KPI rows the agent put in its batches (they count in central's ledger)."""
    conn = sqlite3.connect(f"file:{cfg.db_path}?mode=ro", uri=True)
    try:
        n = int(conn.execute("SELECT count(*) FROM batch_kpis").fetchone()[0])
    finally:
        conn.close()
    assert n > 0
    return n


def limit_central(server: CentralServer, max_batch_bytes: int) -> None:
    """Restart central with another upload size limit (what its operator would do)."""
    write_config(
        server.config, server.config.parent / "central", server.port,
        max_batch_bytes=max_batch_bytes, max_batch_rows=100_000,
        max_decompressed_bytes=16 * 1024 * 1024,
    )  # fmt: skip
    server.restart()


def test_flagged_413_batch_is_listed_requeued_and_uploaded_once(
    tmp_path: Path, central_server: CentralServer
) -> None:
    token = create_token(central_server.config, "gw-up")
    config = agent_config(tmp_path, url=central_server.url, token=token,
                          central={"batch_max_rows": 2000})  # fmt: skip
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(2010)))
    # 11-15 KB for the 2000-row batch (timestamps delta-encoded), 5.5-8 KB for the 10-row one
    limit_central(central_server, 10_000)
    res = agent("flush", "--config", str(config))
    assert res.returncode == 1 and "(413)" in res.stderr, res.stderr
    assert [b["state"] for b in batches(cfg)] == ["flagged", "uploaded"]
    first = batches(cfg)[0]["batch_id"]

    listed = agent("batches", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "flagged 1" in listed.stdout and "uploaded 1" in listed.stdout
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith(first))
    assert "flagged" in line and " 413 " in line
    data = json.loads(agent("batches", "--config", str(config), "--json").stdout)
    assert [b["batch_id"] for b in data["batches"]] == [first]
    assert data["batches"][0]["reason"] and data["counts"]["flagged"] == 1
    uploaded = agent("batches", "--config", str(config), "--state", "uploaded", "--json")
    assert [b["state"] for b in json.loads(uploaded.stdout)["batches"]] == ["uploaded"]

    # usage errors: exit 2, one line, naming the fix
    for bad in ([], [first, "--all"]):
        out = agent("requeue", "--config", str(config), *bad)
        assert out.returncode == 2 and "fleetpulse agent batches" in out.stderr, out
    out = agent("requeue", "--config", str(config), "gw-up-0000009999")
    assert out.returncode == 2 and "no batch gw-up-0000009999" in out.stderr

    # central's operator raises the limit; ours puts the batch back
    limit_central(central_server, 1024 * 1024)
    out = agent("requeue", "--config", str(config), first)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"requeued     {first}: waiting for upload (was 413")
    assert [b["state"] for b in batches(cfg)] == ["exported", "uploaded"]
    # idempotent: asking again says it already waits
    again = agent("requeue", "--config", str(config), first)
    assert again.returncode == 0 and "already waiting for upload" in again.stdout
    assert agent("flush", "--config", str(config)).returncode == 0
    assert [b["state"] for b in batches(cfg)] == ["uploaded", "uploaded"]
    got = ledger(central_server.config.parent / "central")
    assert sorted(b for b, _, _ in got) == sorted(b["batch_id"] for b in batches(cfg))
    # every reading once, plus the local KPI rows the flushes' DAG runs shipped (schema v2)
    assert sum(r for _, r, _ in got) == 2010 + kpi_rows_shipped(cfg)
    # nothing flagged left: --all has nothing to do
    none = agent("requeue", "--config", str(config), "--all")
    assert none.returncode == 0 and "no flagged batch" in none.stdout


def test_missing_file_is_named_and_rebuild_puts_it_back(
    tmp_path: Path, central_server: CentralServer
) -> None:
    token = create_token(central_server.config, "gw-up")
    config = agent_config(tmp_path, url=central_server.url, token=token,
                          central={"batch_max_rows": 1000})  # fmt: skip
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(2000)))
    limit_central(central_server, 4096)
    assert agent("flush", "--config", str(config)).returncode == 1
    # the DAG's KPI rows go first: 10 of them + 990 readings, 1000 readings, 10 readings
    assert [b["readings"] for b in batches(cfg)] == [990, 1000, 10]
    assert [b["state"] for b in batches(cfg)] == ["flagged", "flagged", "flagged"]
    gone = Path(batches(cfg)[1]["path"])
    gone.unlink()
    limit_central(central_server, 1024 * 1024)

    out = agent("requeue", "--config", str(config), "--all")
    assert out.returncode == 1
    assert f"its file {gone} is missing" in out.stdout
    assert "run again with --rebuild" in out.stdout
    assert [b["state"] for b in batches(cfg)] == ["exported", "flagged", "exported"]

    out = agent("requeue", "--config", str(config), "--all", "--rebuild", "--json")
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert [(d["outcome"], d["ok"]) for d in done] == [("rebuilt", True)]
    assert gone.is_file()
    assert agent("flush", "--config", str(config)).returncode == 0
    got = sum(r for _, r, _ in ledger(central_server.config.parent / "central"))
    assert got == 2000 + kpi_rows_shipped(cfg)


def test_requeue_help_and_docs() -> None:
    for cmd in ("requeue", "batches"):
        out = agent(cmd, "--help")
        assert out.returncode == 0 and "--config" in out.stdout
    assert "--rebuild" in agent("requeue", "--help").stdout
    for doc in ("agent.md", "operations.md"):
        text = (ROOT / "docs" / doc).read_text()
        assert "fleetpulse agent requeue" in text and "fleetpulse agent batches" in text
