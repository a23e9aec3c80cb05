"""Bounded disk: backpressure holds acks (the broker keeps the messages) and recovers when
uploads free space; drop_oldest drops and counts; no corruption either way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from agent.buffer import Buffer
from agent.disk import DiskGuard, usage
from tests.agent_support import (
    AgentProcess,
    Publisher,
    count,
    fleet_messages,
    integrity,
    key_of,
    subscribed,
    wait_for,
)
from tests.agent_upload_support import (
    add_readings,
    agent_config,
    batches,
    cfg_of,
    landed_readings,
    reading_row,
)
from tests.brokers import Broker
from tests.central_support import CentralServer, central_server, create_token

__all__ = ["central_server"]  # the fixture, imported for pytest

MiB = 1024 * 1024


def _metric(url: str, name: str) -> float | None:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_backpressure_holds_acks_and_recovers_when_space_returns(
    tmp_path: Path, broker: Broker, central_server: CentralServer
) -> None:
    token = create_token(central_server.config, "gw-up")
    central_server.stop()  # uploads fail: the buffer can only grow
    config = agent_config(
        tmp_path, url=central_server.url, token=token, mqtt_port=broker.port,
        schedule={"export_interval_s": 1, "upload_interval_s": 1, "disk_check_s": 0.2},
        storage={"max_disk_bytes": 6 * MiB, "on_full": "backpressure"},
        central={"batch_max_rows": 5000, "retry_max_s": 3},
    )  # fmt: skip
    cfg = cfg_of(config)
    url = f"http://{cfg.metrics_listen}/metrics"
    messages = fleet_messages(60_000, devices=200)
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    # the broker queues for the agent's session only once it exists
    wait_for("the agent's subscription", lambda: subscribed(cfg.db_path), 30)
    pub = Publisher(broker.port, client_id="disk-pub")
    try:
        pub.publish(messages)
        pub.wait_all(180)  # the broker has every message, whatever the agent does
        wait_for("the alarm", lambda: _metric(url, "fleetpulse_agent_disk_full") == 1, 120)
        held = count(cfg.db_path)
        assert 0 < held < 60_000
        assert "disk budget reached" in agent.log_text()
        # nothing more is committed while full
        wait_for("ingest to hold", lambda: count(cfg.db_path) == held, 10, every=1.0)
        assert count(cfg.db_path) == held
        # space returns: central is back, uploaded readings are pruned, ingest resumes
        central_server.start()
        wait_for(
            "every message stored and uploaded",
            lambda: (
                _metric(url, "fleetpulse_agent_readings_stored_total") == 60_000
                and _metric(url, "fleetpulse_agent_backlog_rows") == 0
            ),
            240,
            every=0.5,
        )
        assert _metric(url, "fleetpulse_agent_disk_full") == 0
        assert agent.terminate() == 0
    finally:
        pub.close()
        if agent.alive():
            agent.kill()
    assert integrity(cfg.db_path) == "ok"
    want = sorted((d, k, ts, seq) for ts, d, k, seq in map(key_of, messages))
    assert sorted(landed_readings(central_server.config.parent / "central")) == want
    assert "disk space is back" in agent.log_text()


def test_drop_oldest_drops_counts_and_keeps_the_newest(tmp_path: Path) -> None:
    config = agent_config(tmp_path, storage={"max_disk_bytes": 2 * MiB, "on_full": "drop_oldest"})
    cfg = cfg_of(config)
    n = 30_000
    add_readings(cfg, (reading_row(i) for i in range(n)))
    buf = Buffer.open(cfg.db_path)
    try:
        guard = DiskGuard(cfg, buf.conn)
        before = usage(buf.conn, cfg.db_path, cfg.outbox).total
        assert before > 2 * MiB
        after = guard.check(0).total
        assert after < 2 * MiB * 0.9
        assert not guard.full.is_set()
        left = buf.conn.execute("SELECT count(*), min(id), max(id) FROM readings").fetchone()
        dropped = buf.conn.execute("SELECT value FROM meta WHERE key = 'dropped_rows'").fetchone()
        assert dropped[0] == n - left[0] > 0
        # the oldest went, the newest stayed, contiguous
        assert left[2] == n and left[2] - left[1] + 1 == left[0]
        assert buf.integrity_check() == "ok"
    finally:
        buf.close()


def test_drop_oldest_removes_waiting_batches_first(tmp_path: Path) -> None:
    from agent.scheduler import Stages

    config = agent_config(
        tmp_path, url="http://127.0.0.1:9", token="t",
        storage={"max_disk_bytes": 2 * MiB, "on_full": "drop_oldest"},
        central={"batch_max_rows": 5000},
    )  # fmt: skip
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(30_000)))
    stages = Stages(cfg)
    try:
        assert len(stages.export()) == 6
        stages.check_disk()
        states = [b["state"] for b in batches(cfg)]
        assert states[0] == "dropped" and states[-1] == "exported"
        files = {p.name for p in cfg.outbox.glob("*.parquet")}
        assert files == {
            f"{b['batch_id']}.parquet" for b in batches(cfg) if b["state"] == "exported"
        }
    finally:
        stages.close()
    conn = sqlite3.connect(cfg.db_path)
    dropped = conn.execute("SELECT value FROM meta WHERE key = 'dropped_rows'").fetchone()[0]
    left = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    conn.close()
    assert dropped + left == 30_000


def test_uploaded_readings_go_after_retention_hours_and_only_they(tmp_path: Path) -> None:
    from agent.scheduler import Stages

    config = agent_config(
        tmp_path,
        url="http://central.invalid",
        token="t",
        storage={"retention_hours": 1},
        central={"batch_max_rows": 100},
    )
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(250)))
    now = [1_000_000_000_000]
    answers = iter([201, 201, 503])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers), json={})

    stages = Stages(cfg, transport=httpx.MockTransport(handler), clock_ms=lambda: now[0])
    try:
        assert len(stages.export()) == 3
        assert len(stages.upload().uploaded) == 2  # the third waits (503)
        stages.check_disk()
        assert count(cfg.db_path) == 250  # within the retention: kept for the local view
        now[0] += 3_600_000 + 1
        stages.check_disk()
        left = sqlite3.connect(cfg.db_path).execute("SELECT min(id), count(*) FROM readings")
        assert left.fetchone() == (201, 50)  # the not-uploaded batch stays, whatever its age
    finally:
        stages.close()
