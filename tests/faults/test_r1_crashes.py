"""R1: the agent process SIGKILLed at random times mid-stream; every accepted message stays, once.

The broker is not touched here (R3 does that), so every message Mosquitto acknowledged to
the publisher reaches the agent's session: all of them must end up in the buffer exactly
once, whatever the kills interrupted (decode, COMMIT, the PUBACK write).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tests.agent_support import (
    AgentProcess,
    count,
    fleet_messages,
    integrity,
    key_of,
    query,
    stored_keys,
    subscribed,
    wait_for,
    write_config,
)
from tests.brokers import Broker
from tests.faults.figures_support import Figure, pick
from tests.faults.mqtt_support import TimedPublisher


def test_sigkills_at_random_times_lose_and_double_nothing(
    broker: Broker, tmp_path: Path, figure: Figure
) -> None:
    total = pick(10_000, 100_000)
    kills = pick(5, 50)
    rate = pick(2500, 1500)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    db = tmp_path / "data" / "agent.sqlite3"
    agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "agent.log").start()
    wait_for("the agent to subscribe", lambda: subscribed(db), 30)
    messages = fleet_messages(total)
    pub = TimedPublisher(broker.port, f"r1-pub-{seed}")
    duration = total / rate
    plan = sorted(rng.uniform(0.05, 0.95) * duration for _ in range(kills))
    stored_at_kill: list[int] = []
    sender = threading.Thread(target=pub.publish, args=(messages, rate), daemon=True)
    started = time.monotonic()
    sender.start()
    try:
        for at in plan:
            time.sleep(max(0.0, started + at - time.monotonic()))
            agent.kill()
            stored_at_kill.append(count(db))
            time.sleep(rng.uniform(0.0, 0.3))
            agent.start()
        sender.join()
        pub.wait_all(timeout=300)
        wait_for(f"all {total:,} readings", lambda: count(db) >= total, 300, every=0.2)
        time.sleep(1.0)  # a redelivered duplicate, were it stored, would show up now
    finally:
        sender.join()
        pub.close()
        code = agent.terminate()
    keys = stored_keys(db)
    stored = set(keys)
    missing = len({key_of(m) for m in messages} - stored)
    duplicates = len(keys) - len(stored)
    mid_stream = sum(0 < n < total for n in stored_at_kill)
    verdict = integrity(db)
    figure(
        f"{kills} SIGKILLs of the agent ({mid_stream} mid-stream) during {total:,} QoS 1 msgs:"
        f" {missing} of {len(pub.acked_at):,} broker-acked msgs missing from the buffer,"
        f" {duplicates} duplicates, integrity {verdict} (seed {seed})"
    )
    assert code == 0, agent.log_text()[-3000:]
    assert missing == duplicates == 0
    assert verdict == "ok"
    assert mid_stream >= kills * 0.6, stored_at_kill
    assert query(db, "SELECT count(*) FROM observations WHERE end_ms IS NULL") == [(0,)]


@pytest.mark.skip(
    reason="not written yet: the central half (0 missing centrally, 0 duplicates in gold)"
    " and the FLEETPULSE_FAULT export/upload points (agent/faults.py)"
)
def test_fault_points_and_central_side() -> None:
    raise AssertionError("not written yet")
