"""R4: agent ↔ central partitioned (blackhole, reset, slow) for 30 minutes of simulated time.

Simulated time: the test plays a fleet's 30 minutes of traffic compressed by a factor C
(reduced 120, full 10): ``devices`` devices with a 30 s heartbeat send devices/30 msg/s in
real life, so the test publishes ``devices / 30 x C`` msg/s for 1800 / C seconds, with
event times 30 s apart per device (30 minutes of event time). The agent's periods scale
with it: export 60 s / C, upload 30 s / C, ``retry_max_s`` 300 s / C, request timeout
30 s / C — each at least 1 s, the config's floor (docs/reliability.md).

The agent is the real ``fleetpulse agent run``; central is a real ``central serve`` behind
the suite's TCP proxy. Counted: the agent process's RSS during the partition (its export
worker child noted apart), the backlog at the heal and how fast it drains, and every
accepted reading landed exactly once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.agent_support import (
    AgentProcess,
    count,
    fleet_messages,
    key_of,
    query,
    subscribed,
    wait_for,
)
from tests.brokers import Broker
from tests.faults.central_link_support import (
    agent_keys,
    batch_states,
    drained,
    landed_keys,
    rss_mb,
    start_central,
    uploading_agent_config,
)
from tests.faults.figures_support import Figure, pick
from tests.faults.mqtt_support import TimedPublisher
from tests.faults.proxy_support import TcpProxy

GATEWAY = "gw-r4"
SIMULATED_S = 1800.0  # the partition: 30 minutes of the fleet's time
RSS_LIMIT_MB = 20.0
DRAIN_FACTOR = 5.0
HEARTBEAT_S = 30.0


def _uploaded_upto(db: Path) -> int:
    rows = query(db, "SELECT value FROM meta WHERE key = 'uploaded_upto'")
    return int(rows[0][0]) if rows else 0


def _last_id(db: Path) -> int:
    rows = query(db, "SELECT coalesce(max(id), 0) FROM readings")
    return int(rows[0][0]) if rows else 0


def test_partition_keeps_rss_flat_and_drains_fast(
    broker: Broker, tmp_path: Path, figure: Figure
) -> None:
    compression = pick(120, 10)
    devices = pick(50, 300)
    rate = devices / HEARTBEAT_S * compression  # msg/s, real
    partition_s = SIMULATED_S / compression
    warmup_s = pick(2.0, 20.0)
    tail_s = pick(1.0, 20.0)
    retry_max_s = max(1.0, 300.0 / compression)
    central = start_central(tmp_path, GATEWAY)
    proxy = TcpProxy(central.server.port).start()
    cfg = uploading_agent_config(
        tmp_path, broker.port, f"http://127.0.0.1:{proxy.port}", central.token_file, GATEWAY,
        central={"retry_max_s": retry_max_s, "timeout_s": max(1.0, 30.0 / compression),
                 "batch_max_rows": pick(250, 1000)},
        schedule={"export_interval_s": max(1.0, 60.0 / compression),
                  "upload_interval_s": max(1.0, 30.0 / compression),
                  "dag_interval_s": max(1.0, 300.0 / compression), "disk_check_s": 1},
    )  # fmt: skip
    db = tmp_path / "data" / "agent.sqlite3"
    agent = AgentProcess(cfg, tmp_path / "agent.log").start()
    total = int(rate * (warmup_s + partition_s + tail_s))
    messages = fleet_messages(total, devices=devices)
    pub: TimedPublisher | None = None
    samples: list[tuple[float, float]] = []  # (agent RSS, children RSS), MiB
    try:
        wait_for("the agent to subscribe", lambda: subscribed(db), 30)
        pub = TimedPublisher(broker.port, "r4-pub")
        sender = threading.Thread(target=pub.publish, args=(messages, rate), daemon=True)
        started = time.monotonic()
        sender.start()
        time.sleep(warmup_s)  # exports and uploads run through the open link first
        wait_for("a first upload", lambda: _uploaded_upto(db) > 0, 60, 0.05)
        base, base_kids = rss_mb(agent.pid)
        phases = ("blackhole", "reset", "slow")
        cut = time.monotonic()
        upto_at: dict[str, int] = {"cut": _uploaded_upto(db)}
        for i, mode in enumerate(phases):
            proxy.set(mode, rate_bps=2_000, delay_s=0.05)
            until = cut + partition_s * (i + 1) / len(phases)
            while time.monotonic() < until:
                samples.append(rss_mb(agent.pid))
                time.sleep(0.2)
            upto_at[mode] = _uploaded_upto(db)
        # the heal: what is stored now and not uploaded is the backlog
        last_at_heal = _last_id(db)
        upto_at_heal = _uploaded_upto(db)
        backlog = int(query(db, "SELECT count(*) FROM readings WHERE id > ? AND id <= ?",
                            upto_at_heal, last_at_heal)[0][0])  # fmt: skip
        proxy.set("pass")
        healed = time.time()
        wait_for("the backlog to drain", lambda: _uploaded_upto(db) >= last_at_heal,
                 retry_max_s + 60, 0.01)  # fmt: skip
        sender.join()
        pub.wait_all(timeout=120)
        wait_for("every reading in the buffer", lambda: count(db) >= total, 120, 0.1)
        wait_for("the rest to drain", lambda: drained(db), retry_max_s + 60, 0.1)
        code = agent.terminate()
        elapsed = time.monotonic() - started
    finally:
        if pub is not None:
            pub.close()
        if agent.alive():
            agent.kill()
        proxy.close()
        central.server.stop()
    stored = agent_keys(db)
    landed = landed_keys(central.data)
    missing_buffer = len({(d, k, t, s) for t, d, k, s in map(key_of, messages)} - set(stored))
    missing = len(set(stored) - set(landed))
    dupes = len(landed) - len(set(landed))
    rss = [own for own, _ in samples]
    growth = max(rss) - base
    kids = max([base_kids] + [k for _, k in samples])
    between = "SELECT count(*) FROM readings WHERE id > ? AND id <= ?"
    slow_moved = int(query(db, between, upto_at["reset"], upto_at["slow"])[0][0])
    # the batches that carried the backlog, in upload order: (uploaded at, readings)
    marks = [(int(t) / 1000, int(n)) for t, n in query(
        db, "SELECT uploaded_ms, readings FROM batches WHERE uploaded_ms >= ? AND first_id <= ?"
        " ORDER BY uploaded_ms", int(healed * 1000), last_at_heal)]  # fmt: skip
    first_at, last_at = marks[0][0], marks[-1][0]
    # throughput once the link is back: readings of batches 2..n over first → last mark
    drain_rate = sum(n for _, n in marks[1:]) / max(last_at - first_at, 1e-3)
    figure(
        f"{partition_s:.0f} s partition = 30 min simulated (compression {compression}x,"
        f" {devices} devices at 30 s = {rate:.0f} msg/s; blackhole, reset, slow thirds):"
        f" agent RSS {base:.1f} MiB at the cut, max {max(rss):.1f} MiB (+{growth:.1f},"
        f" limit {RSS_LIMIT_MB:.0f}), export worker child max {kids:.1f} MiB; 0 uploads"
        f" through blackhole and reset: {upto_at['cut'] == upto_at['reset']}, {slow_moved:,}"
        " readings through the slow link;"
        f" backlog {backlog:,} readings at the heal; first batch accepted"
        f" {first_at - healed:.1f} s after it (retry_max_s {retry_max_s:.1f}), then"
        f" {len(marks)} batches in {last_at - first_at:.2f} s: {drain_rate:,.0f} msg/s ="
        f" {drain_rate / rate:.0f}x ingest (limit {DRAIN_FACTOR:.0f}x);"
        f" {missing} of {len(set(stored)):,} accepted readings"
        f" missing centrally, {dupes} landed twice, {missing_buffer} broker-acked missing from"
        f" the buffer ({elapsed:.0f} s run)"
    )
    assert code == 0, agent.log_text()[-3000:]
    assert growth <= RSS_LIMIT_MB, samples
    # blackhole and reset let nothing through; the slow link may move some
    assert upto_at["cut"] == upto_at["blackhole"] == upto_at["reset"], upto_at
    assert backlog > 0
    assert drain_rate >= DRAIN_FACTOR * rate
    assert len(marks) >= 3, marks
    assert first_at - healed <= retry_max_s + max(1.0, 30.0 / compression) + 2.0
    assert missing == missing_buffer == dupes == 0
    assert set(batch_states(db)) == {"uploaded"}
