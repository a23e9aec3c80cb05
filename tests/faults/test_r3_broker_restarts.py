"""R3: Mosquitto SIGKILLed and SIGTERMed mid-stream; the agent reconnects and loses nothing.

"Accepted" is what the agent acknowledged after its COMMIT (the Service's ``on_acked``):
every accepted message must be in the buffer exactly once. What the broker itself loses
is counted apart and must fit the shipped config: only a SIGKILL loses, and only messages
it acknowledged to the publisher within one ``autosave_interval`` before the kill.
"""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
from pathlib import Path

from tests.agent_support import count, fleet_messages, integrity, key_of, stored_keys, wait_for
from tests.agent_support import write_config as agent_config
from tests.brokers import wait_port
from tests.faults.figures_support import Figure, pick
from tests.faults.mqtt_support import (
    AgentThread,
    TimedPublisher,
    seconds,
    settle,
    shipped_broker,
)

RECONNECT_LIMIT_S = 10.0


def test_broker_restarts_lose_nothing_accepted(tmp_path: Path, figure: Figure) -> None:
    total = pick(10_000, 100_000)
    restarts = pick(2, 20)  # half SIGTERM, half SIGKILL, alternating, SIGTERM first
    rate = pick(2500, 1250)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    broker, shipped = shipped_broker(tmp_path / "broker")
    autosave_s = seconds(shipped["autosave_interval"])
    db = tmp_path / "data" / "agent.sqlite3"
    # The agent's shipped reconnect defaults: the 10 s figure must hold without tuning.
    agent = AgentThread(agent_config(tmp_path, broker.port)).start()
    pub: TimedPublisher | None = None
    try:
        wait_for("the agent to subscribe", lambda: agent.service.subscribed, 30)
        messages = fleet_messages(total)
        pub = TimedPublisher(broker.port, f"r3-pub-{seed}")
        sender = threading.Thread(target=pub.publish, args=(messages, rate), daemon=True)
        started = time.monotonic()
        sender.start()
        period = total / rate / (restarts + 1)
        kills: list[float] = []
        reconnect: list[float] = []
        stored_at_restart: list[int] = []
        for i in range(restarts):
            time.sleep(
                max(0.0, started + (i + 1) * period * rng.uniform(0.9, 1.1) - time.monotonic())
            )
            how = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
            stored_at_restart.append(count(db))
            if how == signal.SIGKILL:
                kills.append(time.monotonic())
                broker.kill()
            else:
                broker.stop()
            wait_for("the agent to notice", lambda: not agent.service.subscribed, 60, 0.01)
            broker.start()
            wait_port(broker.port)
            up = time.monotonic()
            wait_for("the agent to resubscribe", lambda: agent.service.subscribed, 60, 0.01)
            reconnect.append(time.monotonic() - up)
        sender.join()
        pub.wait_all(timeout=300)
        settle(lambda: count(db), quiet_s=3.0, timeout=300)
    finally:
        if pub is not None:
            pub.close()
        agent.stop()
        broker.kill()

    keys = stored_keys(db)
    stored = set(keys)
    accepted = set(agent.accepted)
    duplicates = len(keys) - len(stored)
    accepted_lost = len(accepted - stored)
    lost = [i for i in range(total) if key_of(messages[i]) not in stored]
    # A SIGKILLed Mosquitto restarts from its last autosave: what it acknowledged after it
    # may be gone. Anything else missing is a loss the shipped config does not explain.
    window = autosave_s + 1.0
    unexplained = [
        i for i in lost if not any(k - window <= pub.acked_at.get(i, -1e9) <= k for k in kills)
    ]
    verdict = integrity(db)
    figure(
        f"{restarts} restarts ({restarts - len(kills)} SIGTERM, {len(kills)} SIGKILL) during"
        f" {total:,} msgs: reconnect max {max(reconnect):.2f} s, median"
        f" {statistics.median(reconnect):.2f} s (limit {RECONNECT_LIMIT_S:.0f} s);"
        f" {accepted_lost} of {len(accepted):,} accepted lost, {duplicates} duplicates;"
        f" broker lost {len(lost)} it had acked, {len(unexplained)} outside the shipped"
        f" autosave_interval {autosave_s} s before a SIGKILL; integrity {verdict} (seed {seed})"
    )
    assert len(reconnect) == restarts and max(reconnect) <= RECONNECT_LIMIT_S, reconnect
    assert accepted_lost == 0 and duplicates == 0
    assert unexplained == [], unexplained[:20]
    assert verdict == "ok"
    # The restarts hit a running stream, not an idle agent before or after it.
    assert sum(0 < n < total for n in stored_at_restart) >= restarts * 0.8, stored_at_restart
