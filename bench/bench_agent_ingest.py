"""Agent ingest drain rate vs a bare paho subscriber, on a 200,000-message QoS 1 backlog.

Both subscribers get a persistent session on the same private Mosquitto first; then one
publisher queues the backlog (each message fans out to both sessions) and waits for every
PUBACK, so publishing is over before any subscriber starts. Each subscriber then runs in its
own process and drains its queue: the bare one parses JSON and lets paho ack; the agent
validates, commits to SQLite (WAL, synchronous=FULL) and acks after COMMIT. Two rounds in
opposite order even out a machine shared with other work. ``python -m bench agent_ingest``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("FP_BENCH_MESSAGES", "200000"))
RECEIVE_MAXIMUM = 1000
BARE_ID = "bench-bare"
AGENT_ID = "fleetpulse-gw-bench"


def _connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def _client(client_id: str, manual_ack: bool = False) -> mqtt.Client:
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )


def bare_main(port: int, n: int) -> None:
    """The baseline: paho → json.loads → paho's own PUBACK. Prints timings as JSON."""
    client = _client(BARE_ID)
    state: dict[str, Any] = {"count": 0, "first": None, "last": None}

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        json.loads(msg.payload)
        now = time.time()
        if state["first"] is None:
            state["first"] = now
        state["count"] += 1
        state["last"] = now
        if state["count"] >= n:
            c.disconnect()

    client.on_message = on_message
    client.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
    client.loop_forever()
    rss = psutil.Process().memory_info().rss
    print(json.dumps({**state, "rss": rss}))


def _create_session(port: int, client_id: str) -> None:
    """Connect once, subscribe fleet/# with QoS 1, leave: the broker now queues for us."""
    client = _client(client_id)
    done = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("fleet/#", 1)
    client.on_subscribe = lambda c, u, mid, rcs, p: done.set()
    client.connect("127.0.0.1", port, clean_start=True, properties=_connect_props())
    client.loop_start()
    if not done.wait(10):
        raise RuntimeError(f"could not create the session of {client_id}")
    client.disconnect()
    client.loop_stop()


def _publish_backlog(port: int, n: int, t0: int) -> float:
    """Queue ``n`` QoS 1 telemetry messages and wait for every PUBACK; seconds taken."""
    client = _client(f"bench-pub-{t0}")
    acked = [0]
    all_acked = threading.Event()

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        acked[0] += 1
        if acked[0] >= n:
            all_acked.set()

    client.on_publish = on_publish
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.monotonic()
    devices = 500
    for i in range(n):
        dev = f"dev-{i % devices:04d}"
        seq = i // devices
        body = {
            "device_id": dev,
            "ts": t0 + seq * 30_000,
            "seq": seq,
            "metrics": {"temp": 20.5 + seq % 9, "rssi": -60 - i % 30, "battery": 3.7},
            "fw": "2.4.1",
        }
        # paho numbers messages with a 16-bit id: keep fewer than 65,535 unacknowledged
        # or ids collide and paho refuses the message.
        while i - acked[0] > 20_000:
            time.sleep(0.001)
        info = client.publish(f"fleet/site-{i % 7}/{dev}/telemetry", json.dumps(body), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish {i} refused: {mqtt.error_string(info.rc)}")
    if not all_acked.wait(600):
        raise RuntimeError(f"only {acked[0]}/{n} PUBACKs")
    took = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return took


def _write_agent_config(tmp: Path, port: int) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'gateway_id = "gw-bench"\ndata_dir = "{tmp / "agent-data"}"\nlog_level = "warning"\n'
        f'[mqtt]\nport = {port}\nclient_id = "{AGENT_ID}"\n'
        f"receive_maximum = {RECEIVE_MAXIMUM}\n"
    )
    return cfg


def _start_agent(cfg: Path, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLEETPULSE_DATA_DIR": str(data_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "fleetpulse", "agent", "run", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
    )


def _max_id(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT max(id) FROM readings").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def _drain_agent(cfg: Path, data_dir: Path, n: int) -> dict[str, float]:
    """Start the agent on its queued session; time from first row to all ``n`` committed."""
    db = data_dir / "agent.sqlite3"
    proc = _start_agent(cfg, data_dir)
    ps = psutil.Process(proc.pid)
    peak = 0
    deadline = time.monotonic() + 600
    try:
        while _max_id(db) < n:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"agent stopped or stalled at {_max_id(db)}/{n} rows")
            peak = max(peak, ps.memory_info().rss)
            time.sleep(0.02)
        end = time.time()
        time.sleep(1.0)
        idle_after = ps.memory_info().rss
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    conn = sqlite3.connect(db)
    first_ms, rows = conn.execute("SELECT min(received_ms), count(*) FROM readings").fetchone()
    conn.close()
    if rows != n:
        raise RuntimeError(f"agent stored {rows} rows, expected {n}")
    took = end - first_ms / 1000
    return {"seconds": took, "rate": n / took, "rss_peak": peak, "rss_idle_after": idle_after}


def _drain_bare(port: int, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_agent_ingest", "bare", str(port), str(n)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    took = res["last"] - res["first"]
    return {"seconds": took, "rate": n / took, "rss": res["rss"]}


def _agent_idle_rss(cfg: Path, data_dir: Path) -> int:
    """Start the agent on an empty queue (this also creates its session); RSS once idle."""
    db = data_dir / "agent.sqlite3"
    proc = _start_agent(cfg, data_dir)
    try:
        deadline = time.monotonic() + 30
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not subscribe within 30 s")
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                ok = conn.execute("SELECT 1 FROM observations WHERE end_ms IS NULL").fetchone()
                conn.close()
                if ok:
                    break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)
        time.sleep(2.0)
        return int(psutil.Process(proc.pid).memory_info().rss)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def run() -> str:
    from tests.brokers import Broker

    mib = 2**20
    with tempfile.TemporaryDirectory(prefix="fp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        broker = Broker(
            tmp / "broker",
            max_queued_messages=2 * N + 1000,
            # Nothing restarts this broker: without autosaving a growing queue every second
            # it cannot be the bottleneck.
            extra_conf="persistence false\n",
        ).start()
        try:
            cfg = _write_agent_config(tmp, broker.port)
            idle_rss = _agent_idle_rss(cfg, tmp / "agent-idle")
            _create_session(broker.port, BARE_ID)
            rounds = []
            for i, order in enumerate((("bare", "agent"), ("agent", "bare"))):
                t0 = 1_767_225_600_000 + i * 10**10
                pub_s = _publish_backlog(broker.port, N, t0)
                print(f"round {i + 1}: backlog of {N} queued in {pub_s:.1f} s", file=sys.stderr)
                res: dict[str, dict[str, float]] = {}
                for who in order:
                    if who == "bare":
                        res[who] = _drain_bare(broker.port, N)
                    else:
                        res[who] = _drain_agent(cfg, tmp / f"agent-{i}", N)
                    print(f"  {who}: {res[who]['rate']:,.0f} msg/s", file=sys.stderr)
                rounds.append((order, pub_s, res))
        finally:
            broker.kill()

    lines = [
        "## Agent ingest: draining a QoS 1 backlog",
        "",
        f"A backlog of {N:,} QoS 1 telemetry messages (~180 bytes, 500 devices) is queued by "
        "Mosquitto 2.0 for two persistent MQTT 5 sessions (Receive Maximum "
        f"{RECEIVE_MAXIMUM}) before either subscriber starts. The **bare** subscriber is paho-mqtt "
        "→ `json.loads` → paho's automatic PUBACK. The **agent** is `fleetpulse agent run` with "
        "default settings: full contract validation, SQLite WAL `synchronous=FULL`, COMMIT "
        "every 500 messages or 50 ms, PUBACKs in arrival order after the COMMIT. Rate = messages "
        "/ (last stored - first received). Two rounds, in opposite order.",
        "",
        "| round | order | backlog queued in | bare msg/s | agent msg/s | agent / bare |",
        "|---|---|---|---|---|---|",
    ]
    tot_bare = tot_agent = 0.0
    peak = 0.0
    idle_after = 0.0
    for i, (order, pub_s, res) in enumerate(rounds, 1):
        b, a = res["bare"], res["agent"]
        tot_bare += b["seconds"]
        tot_agent += a["seconds"]
        peak = max(peak, a["rss_peak"])
        idle_after = max(idle_after, a["rss_idle_after"])
        lines.append(
            f"| {i} | {' then '.join(order)} | {pub_s:.1f} s | {b['rate']:,.0f} | "
            f"{a['rate']:,.0f} | {a['rate'] / b['rate']:.2f} |"
        )
    bare_rate = 2 * N / tot_bare
    agent_rate = 2 * N / tot_agent
    ratio = agent_rate / bare_rate
    verdict = "meets the target (≥ 1.0)" if ratio >= 1.0 else (
        "below the 1.0 target" if ratio >= 0.8 else "below 0.8: a defect"
    )  # fmt: skip
    lines += [
        f"| both | | | **{bare_rate:,.0f}** | **{agent_rate:,.0f}** | **{ratio:.2f}** |",
        "",
        f"Ratio agent / bare over both rounds: **{ratio:.2f}** — {verdict}.",
        "",
        "| agent RSS | MiB |",
        "|---|---|",
        f"| idle (connected, subscribed, empty queue) | {idle_rss / mib:.1f} |",
        f"| peak while draining | {peak / mib:.1f} |",
        f"| idle 1 s after the drain | {idle_after / mib:.1f} |",
        "",
        f"Target ≤ 80 MiB: {'met' if peak <= 80 * mib else 'NOT met'}. The bare subscriber's "
        f"RSS at the end was {max(r[2]['bare']['rss'] for r in rounds) / mib:.1f} MiB.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "bare":
        bare_main(int(sys.argv[2]), int(sys.argv[3]))
    else:
        print(run())
