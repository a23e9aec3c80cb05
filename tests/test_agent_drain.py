"""The running agent against a real broker and central: backlog grows while central is down,
then drains completely; metrics on metrics_listen say so along the way."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.agent_support import (
    AgentProcess,
    count,
    fleet_messages,
    key_of,
    publish_all,
    subscribed,
    wait_for,
)
from tests.agent_upload_support import agent_config, batches, cfg_of, landed_readings, ledger
from tests.brokers import Broker
from tests.central_support import CentralServer, central_server, create_token

__all__ = ["central_server"]  # the fixture, imported for pytest

FAST = {"export_interval_s": 1, "upload_interval_s": 1, "dag_interval_s": 2, "disk_check_s": 0.5}


def scrape(url: str) -> dict[str, float]:
    """``name value`` lines of a /metrics page (labels kept in the name)."""
    text = httpx.get(url, timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_backlog_grows_while_central_is_down_then_drains(
    tmp_path: Path, broker: Broker, central_server: CentralServer
) -> None:
    token = create_token(central_server.config, "gw-up")
    config = agent_config(tmp_path, url=central_server.url, token=token, mqtt_port=broker.port,
                          schedule=FAST, central={"batch_max_rows": 2000})  # fmt: skip
    cfg = cfg_of(config)
    metrics_url = f"http://{cfg.metrics_listen}/metrics"
    central_data = central_server.config.parent / "central"
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        wait_for("metrics", lambda: _up(metrics_url), 30)
        wait_for("the agent's subscription", lambda: subscribed(cfg.db_path), 30)
        first = fleet_messages(3000)
        publish_all(broker.port, first)
        wait_for("first batches uploaded", lambda: _uploaded_rows(cfg) == 3000, 60)
        central_server.stop()
        second = fleet_messages(9000)[3000:]
        publish_all(broker.port, second)
        # the backlog grows: exported batches pile up, each upload attempt fails
        wait_for("backlog exported", lambda: _exported_rows(cfg) == 6000, 60)
        # the export runs in a worker process: the whole backlog may be exported in one run,
        # and the upload it wakes fails a moment later
        wait_for(
            "a failed upload",
            lambda: scrape(metrics_url)["fleetpulse_agent_upload_failures_total"] >= 1,
            30,
        )
        m = scrape(metrics_url)
        assert m["fleetpulse_agent_backlog_rows"] == 6000
        assert m["fleetpulse_agent_backlog_batches"] >= 3
        assert m["fleetpulse_agent_upload_failures_total"] >= 1
        assert m["fleetpulse_agent_readings_stored_total"] == 9000
        time.sleep(1.5)
        assert scrape(metrics_url)["fleetpulse_agent_last_upload_age_seconds"] >= 1
        central_server.start()
        # retry_max_s is 300 s by default, but the first steps are 1, 2, 4 s of full jitter
        wait_for("backlog drained", lambda: _uploaded_rows(cfg) == 9000, 120)
        m = scrape(metrics_url)
        assert m["fleetpulse_agent_backlog_rows"] == 0
        assert m["fleetpulse_agent_backlog_batches"] == 0
        wait_for(
            "a DAG run", lambda: scrape(metrics_url)["fleetpulse_agent_dag_runs_total"] >= 1, 30
        )
        assert agent.terminate() == 0
    finally:
        if agent.alive():
            agent.kill()
    got = ledger(central_data)
    assert [b for b, _, _ in got] == [b["batch_id"] for b in batches(cfg)]
    want = sorted((d, k, ts, seq) for ts, d, k, seq in map(key_of, first + second))
    assert sorted(landed_readings(central_data)) == want
    assert "Traceback" not in agent.log_text()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _uploaded_rows(cfg: object) -> int:
    return sum(b["last_id"] - b["first_id"] + 1 for b in batches(cfg) if b["state"] == "uploaded")  # type: ignore[arg-type]


def _exported_rows(cfg: object) -> int:
    return sum(b["last_id"] - b["first_id"] + 1 for b in batches(cfg) if b["state"] == "exported")  # type: ignore[arg-type]


def test_metrics_text_format(tmp_path: Path) -> None:
    from agent.metrics import Metric, render

    text = render([
        Metric("a_total", "counter", "things", 3),
        Metric("b", "gauge", "labelled", samples={(("dev", 'x"y'),): 0.5}),
        Metric("c_seconds", "gauge", "never", float("inf")),
    ])  # fmt: skip
    assert text.splitlines() == [
        "# HELP a_total things", "# TYPE a_total counter", "a_total 3",
        "# HELP b labelled", "# TYPE b gauge", 'b{dev="x\\"y"} 0.5',
        "# HELP c_seconds never", "# TYPE c_seconds gauge", "c_seconds +Inf",
    ]  # fmt: skip


def test_a_hanging_central_never_blocks_ingest(tmp_path: Path, broker: Broker) -> None:
    """Central accepts the connection and never answers: readings still flow in."""
    import socket
    import threading

    hang = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        hang.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(hang.accept()[0])  # read nothing, answer nothing
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{hang.getsockname()[1]}"
    config = agent_config(tmp_path, url=url, token="t", mqtt_port=broker.port,
                          schedule=FAST, central={"timeout_s": 30})  # fmt: skip
    cfg = cfg_of(config)
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        wait_for("the agent's subscription", lambda: subscribed(cfg.db_path), 30)
        publish_all(broker.port, fleet_messages(1000))
        wait_for("an upload stuck on central", lambda: len(held) >= 1, 30)
        started = time.monotonic()
        publish_all(broker.port, fleet_messages(3000)[1000:])
        wait_for("ingest while the upload hangs", lambda: count(cfg.db_path) == 3000, 20)
        # all of it arrived well inside the 30 s the stuck request may take
        assert time.monotonic() - started < 20
        assert not any(b["state"] == "uploaded" for b in batches(cfg))
    finally:
        agent.kill()
        stop.set()
        hang.close()
        for s in held:
            s.close()
