"""Upload against the real central API: happy path, lost responses, crashes, refusals, backoff."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.config import AgentConfig
from agent.faults import FAULT_EXIT
from agent.scheduler import Stages
from agent.upload import clamp_deadline, full_jitter, retry_after_s
from tests.agent_upload_support import (
    T0_MS,
    DroppingProxy,
    add_observation,
    add_readings,
    agent_config,
    batches,
    cfg_of,
    landed_readings,
    ledger,
    reading_row,
)
from tests.central_support import CentralServer, central_server, create_token, put

__all__ = ["central_server"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parent.parent


def flush(config: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """``fleetpulse agent flush`` as a real process (``fault``: a FLEETPULSE_FAULT point)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    if fault:
        env["FLEETPULSE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agent", "flush", "--config", str(config), "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip


def setup(tmp_path: Path, server: CentralServer, n: int, **kw: object) -> Path:
    token = create_token(server.config, "gw-up")
    config = agent_config(tmp_path, url=server.url, token=token, **kw)  # type: ignore[arg-type]
    cfg = cfg_of(config)
    assert add_readings(cfg, (reading_row(i) for i in range(n))) == n
    add_observation(cfg, T0_MS, T0_MS + 3_600_000, T0_MS + 3_600_000)
    return config


def kpi_rows(cfg: AgentConfig) -> list[int]:
    """KPI rows per batch, in sequence order."""
    conn = sqlite3.connect(f"file:{cfg.db_path}?mode=ro", uri=True)
    try:
        return [n for (n,) in conn.execute(
            "SELECT (SELECT count(*) FROM batch_kpis k WHERE k.seq = b.seq) FROM batches b"
            " ORDER BY b.seq"
        )]  # fmt: skip
    finally:
        conn.close()


def keys(n: int) -> list[tuple[str, str, int, int]]:
    return sorted((f"dev-{i % 5}", "telemetry", T0_MS + (i // 5) * 30_000, i) for i in range(n))


def test_flush_uploads_every_reading_once(tmp_path: Path, central_server: CentralServer) -> None:
    config = setup(tmp_path, central_server, 2500, central={"batch_max_rows": 1000})
    res = flush(config)
    assert res.returncode == 0, res.stderr
    rows = batches(cfg_of(config))
    assert [b["state"] for b in rows] == ["uploaded"] * 3
    # the flush's DAG computed the local KPI rows: they go first, readings fill the rest
    k = kpi_rows(cfg_of(config))
    assert k[0] > 0 and k[1:] == [0, 0]
    kpis = k[0]
    assert [(b["first_id"], b["last_id"]) for b in rows] == [
        (1, 1000 - kpis), (1001 - kpis, 2000 - kpis), (2001 - kpis, 2500)
    ]  # fmt: skip
    got = ledger(central_server.config.parent / "central")
    assert [b for b, _, _ in got] == [b["batch_id"] for b in rows]
    # observation rows ride along in the first batch
    assert sum(r for _, r, _ in got) == 2500 + 1 + kpis
    assert sorted(landed_readings(central_server.config.parent / "central")) == keys(2500)
    # uploaded files leave the outbox; a second flush has nothing to do
    assert not list(cfg_of(config).outbox.glob("*.parquet"))
    again = flush(config)
    assert again.returncode == 0 and '"exported": []' in again.stdout


def test_lost_response_after_commit_makes_no_duplicate(
    tmp_path: Path, central_server: CentralServer
) -> None:
    proxy = DroppingProxy(central_server.port)
    try:
        config = setup(tmp_path, central_server, 300)
        cfg = cfg_of(config)
        cfg = cfg.model_copy(update={"central": cfg.central.model_copy(update={"url": proxy.url})})
        stages = Stages(cfg, rand=lambda: 0.0)
        try:
            assert stages.export()
            proxy.drop_next_response = True
            first = stages.upload()
            assert proxy.dropped == 1 and first.error is not None and not first.uploaded
            # central committed it: the ledger has it although the agent does not know
            assert len(ledger(central_server.config.parent / "central")) == 1
            assert batches(cfg)[0]["state"] == "exported"
            second = stages.upload()
            assert second.uploaded == [batches(cfg)[0]["batch_id"]], second
        finally:
            stages.close()
        assert batches(cfg)[0]["http_status"] == 200  # the idempotent replay
        got = ledger(central_server.config.parent / "central")
        assert len(got) == 1 and got[0][1] == 301
        assert sorted(landed_readings(central_server.config.parent / "central")) == keys(300)
    finally:
        proxy.close()


@pytest.mark.parametrize(
    "fault",
    ["after_reserve_before_write", "mid_rename", "after_export_before_mark",
     "after_upload_before_mark"],
)  # fmt: skip
def test_crash_at_a_fault_point_loses_and_doubles_nothing(
    tmp_path: Path, central_server: CentralServer, fault: str
) -> None:
    config = setup(tmp_path, central_server, 1500, central={"batch_max_rows": 1000})
    crashed = flush(config, fault)
    if fault == "after_upload_before_mark":
        assert crashed.returncode == FAULT_EXIT, crashed.stderr
    else:
        # the export worker process dies there; flush reports it and fails
        assert crashed.returncode == 1, crashed.stderr
        assert f"exit status {FAULT_EXIT}" in crashed.stderr and fault in crashed.stderr
    first = batches(cfg_of(config))[0]
    assert first["state"] == {"after_reserve_before_write": "reserved",
                              "mid_rename": "reserved",
                              "after_export_before_mark": "reserved",
                              "after_upload_before_mark": "exported"}[fault]  # fmt: skip
    # renamed into the outbox but not marked: the next run writes it again, same bytes
    assert Path(first["path"]).exists() == (fault != "after_reserve_before_write")
    if fault == "after_upload_before_mark":
        assert len(ledger(central_server.config.parent / "central")) == 1
    res = flush(config)
    assert res.returncode == 0, res.stderr
    rows = batches(cfg_of(config))
    assert [b["state"] for b in rows] == ["uploaded", "uploaded"]
    got = ledger(central_server.config.parent / "central")
    assert [b for b, _, _ in got] == [b["batch_id"] for b in rows]
    assert sorted(landed_readings(central_server.config.parent / "central")) == keys(1500)


def test_409_is_flagged_not_retried_and_later_batches_go_on(
    tmp_path: Path, central_server: CentralServer
) -> None:
    from tests.central_support import make_batch

    config = setup(tmp_path, central_server, 1500, central={"batch_max_rows": 1000})
    token = (tmp_path / "central-token").read_text()
    # another body already stored under the id the agent will use for its first batch
    with httpx.Client(base_url=central_server.url) as client:
        other = make_batch("gw-up", 1, n=3)
        assert put(client, "gw-up-0000000001", other, token).status_code == 201
    res = flush(config)
    assert res.returncode == 1
    assert "refused batch gw-up-0000000001 (409)" in res.stderr
    rows = batches(cfg_of(config))
    assert [b["state"] for b in rows] == ["flagged", "uploaded"]
    assert rows[0]["http_status"] == 409 and rows[0]["last_error"]
    status = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agent", "status", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert "FLAGGED gw-up-0000000001  409" in status.stdout
    # not retried blindly: the next flush leaves it alone
    flush(config)
    assert batches(cfg_of(config))[0]["attempts"] == rows[0]["attempts"]


def test_empty_token_file_keeps_batches_and_says_why(
    tmp_path: Path, central_server: CentralServer
) -> None:
    config = agent_config(tmp_path, url=central_server.url, token="")
    add_readings(cfg_of(config), (reading_row(i) for i in range(10)))
    res = flush(config)
    assert res.returncode == 1
    assert "not registered yet" in res.stderr and "central-token" in res.stderr
    assert [b["state"] for b in batches(cfg_of(config))] == ["exported"]
    # registration later: the next flush uploads without a restart
    (tmp_path / "central-token").write_text(create_token(central_server.config, "gw-up") + "\n")
    assert flush(config).returncode == 0
    assert [b["state"] for b in batches(cfg_of(config))] == ["uploaded"]


def test_refused_token_flags_nothing(tmp_path: Path, central_server: CentralServer) -> None:
    config = agent_config(tmp_path, url=central_server.url, token="fp_not-a-real-token")
    add_readings(cfg_of(config), (reading_row(i) for i in range(10)))
    res = flush(config)
    assert res.returncode == 1 and "refused the token (401" in res.stderr
    assert [b["state"] for b in batches(cfg_of(config))] == ["exported"]


def test_unreachable_central_exits_1_with_the_reason(tmp_path: Path) -> None:
    from tests.brokers import free_port

    config = agent_config(tmp_path, url=f"http://127.0.0.1:{free_port()}", token="t")
    add_readings(cfg_of(config), (reading_row(i) for i in range(10)))
    res = flush(config)
    assert res.returncode == 1 and "cannot reach http://127.0.0.1:" in res.stderr
    assert [b["state"] for b in batches(cfg_of(config))] == ["exported"]


# -- backoff, with a transport that answers what a real server will not on demand ----------


def test_backoff_is_full_jitter_capped_and_honours_retry_after(tmp_path: Path) -> None:
    answers = iter([503, 500, 502, 500, 500, 500, 500, 500, 500, 500, 500, 201])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Content-SHA256"])
        status = next(answers)
        headers = {"Retry-After": "7"} if status == 503 else {}
        return httpx.Response(status, json={"detail": "busy"}, headers=headers)

    config = agent_config(tmp_path, url="http://central.invalid", token="t",
                          central={"retry_max_s": 60})  # fmt: skip
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(10)))
    now = [1_000_000_000]
    stages = Stages(cfg, transport=httpx.MockTransport(handler), clock_ms=lambda: now[0],
                    rand=lambda: 1.0)  # fmt: skip
    try:
        stages.export()
        waits = []
        for _ in range(12):
            res = stages.upload()
            if res.uploaded:
                break
            assert res.retry_in_s is not None
            waits.append(res.retry_in_s)
            # before the wait is over nothing is tried
            assert stages.upload().skipped is not None
            now[0] += int(res.retry_in_s * 1000) + 1
        assert waits[0] == 7.0  # Retry-After beats the 1 s first step
        assert waits[1:6] == [2.0, 4.0, 8.0, 16.0, 32.0]
        assert max(waits) == 60.0  # the cap
        assert res.uploaded and len(set(seen)) == 1
    finally:
        stages.close()


def test_backward_clock_jump_during_backoff_waits_at_most_one_more_backoff(
    tmp_path: Path,
) -> None:
    answers = iter([500, 201])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers), json={"detail": "busy"})

    config = agent_config(tmp_path, url="http://central.invalid", token="t",
                          central={"retry_max_s": 60})  # fmt: skip
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(10)))
    day_ms = 86_400_000
    now = [1_000_000_000 + day_ms]
    stages = Stages(cfg, transport=httpx.MockTransport(handler), clock_ms=lambda: now[0],
                    rand=lambda: 1.0)  # fmt: skip
    try:
        stages.export()
        failed = stages.upload()
        assert failed.retry_in_s == 1.0 and not failed.uploaded
        now[0] -= day_ms  # the gateway's clock jumps back a day mid-backoff
        waiting = stages.upload()
        # still waiting, but no longer than the 1 s backoff that was set (not 24 h + 1 s)
        assert waiting.skipped is not None and "1.0 s more" in waiting.skipped, waiting
        now[0] += 1001
        assert stages.upload().uploaded
    finally:
        stages.close()


def test_clamp_deadline() -> None:
    assert clamp_deadline(5_000, 4_000, 2_000) == 5_000  # in reach: unchanged
    assert clamp_deadline(90_000, 4_000, 2_000) == 6_000  # clock went back: one more wait
    assert clamp_deadline(0, 4_000, 0) == 0


def test_jitter_and_retry_after_parsing() -> None:
    assert full_jitter(3, 1.0, 300.0, lambda: 0.5) == 4.0
    assert full_jitter(30, 1.0, 300.0, lambda: 0.999) < 300.0
    assert retry_after_s("12", 0) == 12.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10.0
    assert retry_after_s("soon", 0) is None
