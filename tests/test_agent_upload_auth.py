"""401/403 from the real central: uploads pause for the gateway, the alarm is up, and a new
token written to ``token_file`` drains the outbox without a restart."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx
import pytest

from agent.metrics import gather
from agent.scheduler import Stages
from agent.status import format_text, read_status
from tests.agent_upload_support import (
    add_readings,
    agent_config,
    batches,
    cfg_of,
    ledger,
    reading_row,
)
from tests.central_support import CentralServer, central_server, cli, create_token

__all__ = ["central_server"]  # the fixture, imported for pytest


def refused_puts(server: CentralServer) -> int:
    """401 answers central counted (its own metrics)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('fleetpulse_central_uploads_total{status="401"}'):
            return int(float(line.split()[-1]))
    return 0


def _metric(stages: Stages, name: str) -> float | None:
    for m in gather(stages.cfg.db_path, {}, stages, False, 0):
        if m.name == name:
            return m.value
    return None


def test_revoked_token_pauses_uploads_then_a_new_token_drains(
    tmp_path: Path, central_server: CentralServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = create_token(central_server.config, "gw-up")
    config = agent_config(tmp_path, url=central_server.url, token=token,
                          central={"batch_max_rows": 100, "auth_retry_s": 300})  # fmt: skip
    cfg = cfg_of(config)
    token_file = tmp_path / "central-token"
    add_readings(cfg, (reading_row(i) for i in range(100)))
    now = [2_000_000_000_000]
    stages = Stages(cfg, clock_ms=lambda: now[0], rand=lambda: 0.0)
    try:
        stages.export()
        assert len(stages.upload().uploaded) == 1
        # the token is revoked on central; more readings arrive
        res = cli("central", "token", "revoke", "gw-up", "--config", str(central_server.config))
        assert res.returncode == 0, res.stderr
        add_readings(cfg, (reading_row(i) for i in range(100, 350)))
        assert len(stages.export()) == 3
        with caplog.at_level(logging.ERROR, logger="agent.upload"):
            refused = stages.upload()
        assert refused.auth_refused == 401 and not refused.uploaded and not refused.flagged
        assert refused.retry_in_s == 300
        # the ERROR names the token file and the fix
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert str(token_file) in errors[0]
        assert "fleetpulse central token create gw-up" in errors[0]
        assert "[central] token_file" in errors[0]
        # kept, not flagged: the token is at fault, not a batch
        assert [b["state"] for b in batches(cfg)] == ["uploaded"] + ["exported"] * 3
        assert [b["http_status"] for b in batches(cfg)][1:] == [401, None, None]
        # the alarm: metric, status (JSON and text)
        assert _metric(stages, "fleetpulse_agent_upload_auth_refused") == 1
        assert _metric(stages, "fleetpulse_agent_upload_auth_failures_total") == 1
        status = read_status(cfg.db_path)
        assert status["upload_auth_refused"]["status"] == 401
        assert "fleetpulse central token create gw-up" in status["upload_auth_refused"]["reason"]
        assert "UPLOAD PAUSED: central refused the token (401)" in format_text(status)

        # paused for the gateway: no request per batch, none per round, until the slow retry
        assert refused_puts(central_server) == 1
        for _ in range(5):
            now[0] += 30_000
            skipped = stages.upload()
            assert skipped.auth_refused == 401 and skipped.skipped and not skipped.error
        assert stages.uploader.stats.auth_failures == 1
        assert refused_puts(central_server) == 1
        # at auth_retry_s the same token is tried once more: still refused
        now[0] += 300_000
        again = stages.upload()
        assert again.auth_refused == 401 and again.error
        assert stages.uploader.stats.auth_failures == 2
        assert refused_puts(central_server) == 2

        # a new token written to the file: tried at the next round, whatever the cadence
        new = create_token(central_server.config, "gw-up")
        token_file.write_text(new + "\n")
        now[0] += 1_000
        healed = stages.upload()
        assert len(healed.uploaded) == 3 and healed.auth_refused is None, healed
    finally:
        stages.close()
    assert [b["state"] for b in batches(cfg)] == ["uploaded"] * 4
    assert sum(r for _, r, _ in ledger(central_server.config.parent / "central")) == 350
    assert read_status(cfg.db_path)["upload_auth_refused"] is None


def test_touching_the_token_file_retries_at_once(
    tmp_path: Path, central_server: CentralServer
) -> None:
    """A token re-enabled on central (or rewritten unchanged): touching the file retries."""
    config = agent_config(tmp_path, url=central_server.url, token="fp1.nope.nope")
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(10)))
    now = [2_000_000_000_000]
    stages = Stages(cfg, clock_ms=lambda: now[0])
    try:
        stages.export()
        assert stages.upload().auth_refused == 401
        assert stages.upload().skipped
        st = (tmp_path / "central-token").stat()
        os.utime(tmp_path / "central-token", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert stages.upload().error  # tried (and refused) again at once
        assert stages.uploader.stats.auth_failures == 2
    finally:
        stages.close()


def test_a_cleared_alarm_makes_a_paused_uploader_retry_at_once(
    tmp_path: Path, central_server: CentralServer
) -> None:
    """Another process (``agent flush`` with another token file) got through and cleared
    the alarm in the buffer: the paused uploader tries again at its next round."""
    config = agent_config(tmp_path, url=central_server.url, token="fp1.nope.nope")
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(10)))
    service = Stages(cfg)
    try:
        service.export()
        assert service.upload().auth_refused == 401
        assert service.upload().skipped
        good = tmp_path / "good-token"
        good.write_text(create_token(central_server.config, "gw-up"))
        central = cfg.central.model_copy(update={"token_file": good})
        other = Stages(cfg.model_copy(update={"central": central}))
        try:
            assert other.upload(force=True).uploaded
        finally:
            other.close()
        assert read_status(cfg.db_path)["upload_auth_refused"] is None
        add_readings(cfg, (reading_row(i) for i in range(10, 20)))
        service.export()
        assert service.upload().auth_refused == 401  # tried at once; its own token is bad
        assert service.uploader.stats.auth_failures == 2
    finally:
        service.close()


def test_403_token_of_another_gateway_pauses_too(
    tmp_path: Path, central_server: CentralServer
) -> None:
    other = create_token(central_server.config, "gw-other")
    config = agent_config(tmp_path, url=central_server.url, token=other)
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(10)))
    stages = Stages(cfg)
    try:
        stages.export()
        res = stages.upload()
        assert res.auth_refused == 403, res
        assert "made for another gateway" in (res.error or "")
        assert [b["state"] for b in batches(cfg)] == ["exported"]
        assert stages.upload().skipped
    finally:
        stages.close()


def test_running_agent_pauses_on_a_revoked_token_and_heals_from_the_file(
    tmp_path: Path, central_server: CentralServer
) -> None:
    """``agent run`` end to end (no broker needed: readings go into its buffer directly)."""
    from tests.agent_support import AgentProcess, wait_for
    from tests.agent_upload_support import landed_readings

    token = create_token(central_server.config, "gw-up")
    config = agent_config(
        tmp_path, url=central_server.url, token=token,
        schedule={"export_interval_s": 1, "upload_interval_s": 1},
        central={"auth_retry_s": 3600},
    )  # fmt: skip
    cfg = cfg_of(config)
    url = f"http://{cfg.metrics_listen}/metrics"

    def metric(name: str) -> float | None:
        try:
            text = httpx.get(url, timeout=2).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    add_readings(cfg, (reading_row(i) for i in range(100)))
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        wait_for("the first upload", lambda: metric("fleetpulse_agent_backlog_rows") == 0, 60)
        res = cli("central", "token", "revoke", "gw-up", "--config", str(central_server.config))
        assert res.returncode == 0, res.stderr
        add_readings(cfg, (reading_row(i) for i in range(100, 200)))
        wait_for("the alarm", lambda: metric("fleetpulse_agent_upload_auth_refused") == 1, 60)
        log = agent.log_text()
        line = next(ln for ln in log.splitlines() if "refused the token" in ln)
        assert " ERROR " in line and str(tmp_path / "central-token") in line
        assert "fleetpulse central token create gw-up" in line
        status = cli("agent", "status", "--config", str(config))
        assert "UPLOAD PAUSED: central refused the token (401)" in status.stdout
        # paused: three upload periods later central has seen that one refusal only
        time.sleep(3.5)
        assert refused_puts(central_server) == 1
        assert metric("fleetpulse_agent_backlog_rows") == 100
        # the operator writes a new token: it drains, no restart
        (tmp_path / "central-token").write_text(create_token(central_server.config, "gw-up"))
        wait_for("the backlog to drain", lambda: metric("fleetpulse_agent_backlog_rows") == 0, 60)
        assert metric("fleetpulse_agent_upload_auth_refused") == 0
        assert "uploads resume" in agent.log_text()
        assert agent.terminate() == 0
    finally:
        if agent.alive():
            agent.kill()
    assert len(landed_readings(central_server.config.parent / "central")) == 200
