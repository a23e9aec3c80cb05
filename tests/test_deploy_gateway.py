"""The example agent config and the shipped broker config work together: a real agent
ingests a device's telemetry over TLS with its password, as on a deployed gateway."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.deploy_support import DEPLOY, REPO, GatewayBroker, connected, make_pki, rewrite_keys

AGENT_PW = "agent-secret"


def test_agent_from_the_example_config_ingests_over_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = GatewayBroker(
        tmp_path / "mosquitto", pki, {"fleetpulse-agent": AGENT_PW, "dev-0042": "dev-secret"}
    ).start()
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(AGENT_PW + "\n")
    config = tmp_path / "agent.toml"
    # the example as shipped, with only the machine-specific values swapped
    config.write_text(
        rewrite_keys(
            (DEPLOY / "agent.example.toml").read_text(),
            {
                "data_dir": f'"{tmp_path / "data"}"',
                "port": str(broker.port),
                "password_file": f'"{password_file}"',
                "tls_ca": f'"{pki.ca}"',
            },
        )
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed in finally
    agent = subprocess.Popen(
        [sys.executable, "-m", "fleetpulse", "agent", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        notes = ""
        while "READY=1" not in notes:  # after its first subscription, over TLS
            notes += notify.recv(4096).decode() + "\n"
        with connected(
            broker.port, "dev-0042", username="dev-0042", password="dev-secret", ca=pki.ca
        ) as (dev, out):
            assert out.connected.wait(10)
            payload = {"device_id": "dev-0042", "ts": int(time.time() * 1000), "seq": 1}
            dev.publish(
                "fleet/site-a/dev-0042/telemetry", json.dumps(payload), qos=1
            ).wait_for_publish(10)
        deadline = time.monotonic() + 30
        status_cmd = [sys.executable, "-m", "fleetpulse", "agent", "status", "--json"]
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [*status_cmd, "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
                env=env,
            )
            assert proc.returncode == 0, proc.stderr
            status = json.loads(proc.stdout)
            if status["readings_total"] == 1:
                break
            time.sleep(0.2)
        assert status["readings_total"] == 1
        assert status["quarantined_total"] == 0
    finally:
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(60)
        log.close()
        notify.close()
        broker.stop()
    assert rc == 0, (tmp_path / "agent.log").read_text()
