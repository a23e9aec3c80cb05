"""The simulator against a real Mosquitto: everything it says it published arrives."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse.cli import main
from sim import Progress, prepare, publish_plan, resolve, simulate
from sim.fleet import plan_fleet, timeline
from tests.brokers import Broker, free_port
from tests.sim_support import Subscriber

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "sim" / "scenarios" / "firmware-regression.toml"


def crashy_scenario(tmp_path: Path) -> Path:
    """The built-in scenario with the faulty firmware running from the start and more junk,
    so one short simulated day exercises crash loops, wills and every malformed kind."""
    text = BUILTIN.read_text()
    for old, new in [
        ("share = 0.7", "share = 0.4"),
        ("share = 0.0\nmtbf_h = 1.3", "share = 0.3\nmtbf_h = 1.3"),
        ("malformed_rate = 0.0003", "malformed_rate = 0.003"),
        ("duplicate_rate = 0.002", "duplicate_rate = 0.01"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "crashy.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("client", ["wire", "paho"])
def test_cli_publishes_every_message_it_counts(
    broker: Broker, tmp_path: Path, client: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    scenario = crashy_scenario(tmp_path)
    sub = Subscriber(broker.port)
    try:
        args = ["sim", "--broker", broker.url, "--scenario", str(scenario), "--devices", "8"]
        args += ["--days", "1", "--seed", "3", "--out", str(out), "--client", client]
        assert main(args) == 0
        doc = json.loads((out / "truth" / "scenario.json").read_text())
        messages = doc["messages"]
        heard = sub.wait_for(messages["published"], timeout=60)
    finally:
        sub.close()
    for name in ("registry.csv", "firmware_versions.avro", "alerts.avro"):
        assert (out / name).stat().st_size > 0
    assert (out / "truth" / "device_day.parquet").stat().st_size > 0
    # the subscriber heard exactly what the simulator says it sent, per kind
    assert heard.total == messages["published"]
    assert dict(heard.by_kind) == messages["by_kind"]
    assert len(heard.invalid) == messages["malformed"] > 0
    labels = messages["by_label"]
    assert labels["status.lwt"] > 20 and labels["event.crash"] > 0
    assert messages["duplicates"] > 0
    # wills: each LWT offline carries the simulated crash instant of the truth timeline
    sc = resolve(scenario, devices=8, days=1, seed=3)
    specs = plan_fleet(sc)
    fw = {f.version: f for f in sc.firmware}
    crashes = {
        (d.device_id, seg.start_s * 1000 + d.skew_ms)
        for d in specs
        for seg in timeline(d, fw, sc.start_s, sc.end_s, sc.seed)
        if seg.cause in ("crash", "loop")
    }
    lwts = {(r.device_id, r.ts_ms) for r in heard.readings if r.detail == "lwt"}
    assert lwts == crashes and len(lwts) == labels["status.lwt"]
    stdout = capsys.readouterr().out
    assert "per device-day" in stdout and "gw-north: fleet/ams/# fleet/gro/#" in stdout


def _retained_statuses(port: int) -> dict[str, str]:
    got: dict[str, str] = {}
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-test-retained")

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got[msg.topic.split("/")[2]] = json.loads(msg.payload)["state"]

    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("fleet/+/+/status", qos=1)
    c.on_subscribe = lambda cl, u, mid, rcs, p: done.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(10)
    time.sleep(1.0)
    c.disconnect()
    c.loop_stop()
    return got


def test_retained_status_is_each_device_final_state(broker: Broker, tmp_path: Path) -> None:
    scenario = crashy_scenario(tmp_path)
    plan = prepare(scenario, tmp_path / "out", devices=12, days=1, seed=11)
    publish_plan(plan, broker.url)
    final = {}
    for d, segs in zip(plan.specs, plan.timelines, strict=True):
        last = segs[-1]
        decommissioned = d.decommissioned_s is not None and last.end_s == d.decommissioned_s
        final[d.device_id] = "online" if last.up and not decommissioned else "offline"
    retained = _retained_statuses(broker.port)
    # a device that ended down mid-crash with no LWT would stay online; lwt_on_crash is 1.0
    assert retained == final


def test_speed_paces_simulated_time(broker: Broker, tmp_path: Path) -> None:
    seen: list[Progress] = []
    sub = Subscriber(broker.port)
    try:
        started = time.monotonic()
        # one simulated day in about 4 s
        result = simulate(
            "firmware-regression",
            broker.url,
            tmp_path / "out",
            devices=2,
            days=1,
            speed=86400 / 4,
            progress=seen.append,
        )
        took = time.monotonic() - started
        heard = sub.wait_for(result.published)
    finally:
        sub.close()
    assert 3.8 <= took <= 12, took
    assert heard.total == result.published
    assert seen and seen[-1].final and seen[-1].published == result.published
    mid = [p for p in seen if not p.final]
    # progress reports simulated time advancing with wall time at the requested speed
    assert all(abs((p.sim_ms / 1000 - 1767225600) / 21600 - p.elapsed_s) < 1.5 for p in mid)


def test_unreachable_broker_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    code = main(
        [
            "sim",
            "--broker",
            f"mqtt://127.0.0.1:{port}",
            "--devices",
            "2",
            "--days",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith(
        f"fleetpulse sim: cannot connect to the broker at mqtt://127.0.0.1:{port}"
    )
    assert "--broker" in err[-1]


def test_bad_broker_url_fails_before_any_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sim", "--broker", "http://127.0.0.1:1883", "--out", str(tmp_path / "o")])
    assert code == 1
    assert "scheme 'http' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_publisher_survives_a_broker_restart(broker: Broker, tmp_path: Path) -> None:
    """Broker stopped mid-run (SIGTERM, persistence on): nothing the simulator sent is lost."""
    plan = prepare(crashy_scenario(tmp_path), tmp_path / "out", devices=4, days=1, seed=5)
    expected = Counter(
        (m.topic, m.payload)
        for m in plan.messages()
        if m.action != 2  # not dropped
    )
    got: Counter[tuple[str, bytes]] = Counter()
    lock = threading.Lock()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-test-durable", clean_session=False)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:
            with lock:
                got[(msg.topic, msg.payload)] += 1

    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("fleet/#", qos=1)
    c.on_message = on_message
    c.reconnect_delay_set(0.1, 0.5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        time.sleep(0.5)
        restarter = threading.Timer(1.5, broker.restart)
        restarter.start()
        # about 6 s of wall time so the restart lands mid-run
        result = publish_plan(plan, broker.url, speed=86400 / 6)
        restarter.join()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(got[k] < n for k, n in expected.items()):
            time.sleep(0.2)
    finally:
        c.disconnect()
        c.loop_stop()
    missing = {k: n - got[k] for k, n in expected.items() if got[k] < n}
    assert not missing, f"{len(missing)} messages lost, e.g. {next(iter(missing))}"
    assert result.published == sum(expected.values())
