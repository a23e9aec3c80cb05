"""Agent fault tests on a real Mosquitto: SIGKILLed agent, killed broker, exactly-once storage."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agent.service import Service
from schemas import Reading
from tests.agent_support import (
    AgentProcess,
    Key,
    Publisher,
    config_of,
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


@pytest.mark.slow
def test_sigkill_at_random_points_stores_every_message_exactly_once(
    broker: Broker, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    cfg = write_config(tmp_path, broker.port)
    db = tmp_path / "data" / "agent.sqlite3"
    agent = AgentProcess(cfg, tmp_path / "agent.log").start()
    # The first start creates the persistent session; from then on the broker queues for it.
    wait_for("the agent to subscribe", lambda: subscribed(db), 30)

    messages = fleet_messages(20_000)
    pub = Publisher(broker.port)
    # Paced so the stream outlasts the kills: ~8 s at 2,500 msg/s.
    sender = threading.Thread(target=pub.publish, args=(messages, 2500))
    started = time.monotonic()
    sender.start()
    # One kill in each of four slices of the stream, at a random point of the slice.
    kill_at = [rng.uniform(0.3 + i * 1.7, 1.8 + i * 1.7) for i in range(4)]
    stored_at_kill = []
    try:
        for at in kill_at:
            time.sleep(max(0.0, started + at - time.monotonic()))
            agent.kill()
            stored_at_kill.append(count(db))
            time.sleep(rng.uniform(0.0, 0.4))
            agent.start()
        sender.join()
        pub.wait_all(timeout=120)
    finally:
        sender.join()
        pub.close()

    try:
        wait_for("all 20,000 readings", lambda: count(db) >= 20_000, 120, every=0.2)
        time.sleep(1.0)  # a redelivered duplicate, were it stored, would show up now
    finally:
        code = agent.terminate()
    print(f"stored at each SIGKILL: {stored_at_kill}; agent log tail:\n{agent.log_text()[-1500:]}")
    assert code == 0, agent.log_text()[-3000:]

    keys = stored_keys(db)
    assert len(keys) == len(set(keys)) == 20_000
    assert set(keys) == {key_of(m) for m in messages}
    # The kills hit a running stream, not an idle agent before or after it.
    assert sum(0 < n < 20_000 for n in stored_at_kill) >= 3, stored_at_kill
    assert integrity(db) == "ok"
    assert query(db, "SELECT count(*) FROM quarantine") == [(0,)]
    # Intervals the kills left open were closed at their last alive mark on restart.
    assert query(db, "SELECT count(*) FROM observations WHERE end_ms IS NULL") == [(0,)]
    assert query(db, "SELECT count(*) FROM observations WHERE closed_by = 'recovered'")[0][0] >= 1
    assert query(db, "SELECT count(*) FROM observations WHERE end_ms < start_ms") == [(0,)]


class _Running:
    """A Service on a thread, with the keys of every batch it acknowledged."""

    def __init__(self, cfg_path: Path) -> None:
        self.acked: list[Key] = []
        self.error: BaseException | None = None
        self.service = Service(config_of(cfg_path), on_acked=self._acked)
        self.thread = threading.Thread(target=self._run, name="agent")

    def _acked(self, readings: Sequence[Reading], acks: Sequence[tuple[int, int]]) -> None:
        self.acked.extend(r.key for r in readings)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def running_agent(broker: Broker, tmp_path: Path) -> Iterator[_Running]:
    cfg = write_config(tmp_path, broker.port, "reconnect_min_s = 0.1\nreconnect_max_s = 1.0")
    run = _Running(cfg)
    run.thread.start()
    try:
        wait_for("the agent to subscribe", lambda: run.service.subscribed, 30)
        yield run
    finally:
        if run.thread.is_alive():
            run.service.stop()
            run.thread.join(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_broker_restart_midstream_loses_nothing_acknowledged(
    broker: Broker, running_agent: _Running, tmp_path: Path, how: signal.Signals
) -> None:
    db = tmp_path / "data" / "agent.sqlite3"
    before = fleet_messages(6000)
    after = fleet_messages(2000, t0=1_800_000_000_000)
    pub = Publisher(broker.port)
    sender = threading.Thread(target=pub.publish, args=(before, 3000))
    sender.start()
    try:
        time.sleep(1.0)
        stored_before = count(db)
        broker.restart(sig=how)
        sender.join()
        pub.publish(after)
        pub.wait_all(timeout=120)
    finally:
        sender.join()
        pub.close()
    after_keys = {key_of(m) for m in after}
    wait_for(
        "messages published after the restart",
        lambda: after_keys <= set(stored_keys(db)),
        60,
        every=0.2,
    )
    time.sleep(1.0)
    running_agent.stop()

    keys = stored_keys(db)
    assert len(keys) == len(set(keys)), "a redelivered message was stored twice"
    stored = set(keys)
    assert 0 < stored_before < len(before), "the broker went down mid-stream"
    # What the agent acknowledged is in the buffer, whatever the broker lost.
    assert set(running_agent.acked) <= stored
    if how == signal.SIGTERM:
        # A broker that saved its state loses nothing it acknowledged to the publisher.
        assert {key_of(m) for m in before} <= stored
    lost = len({key_of(m) for m in before} - stored)
    print(f"{how.name}: stored {len(stored)}, broker lost {lost} of {len(before)} (not acked)")
    intervals = query(db, "SELECT closed_by FROM observations ORDER BY id")
    assert len(intervals) >= 2 and intervals[0] == ("disconnect",), intervals
    assert intervals[-1] == ("shutdown",)
    assert integrity(db) == "ok"
