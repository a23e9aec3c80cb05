"""R1: the agent process SIGKILLed at random times mid-stream; every accepted message stays, once.

The broker is not touched here (R3 does that), so every message Mosquitto acknowledged to
the publisher reaches the agent's session: all of them must end up in the buffer exactly
once, whatever the kills interrupted (decode, COMMIT, the PUBACK write).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

from agent.faults import FAULT_EXIT, FAULT_POINTS
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
from tests.faults.central_link_support import (
    GroupAgentProcess,
    agent_keys,
    batch_states,
    consolidate,
    drained,
    expected_per_device_day,
    gold_device_day,
    landed_keys,
    landing_files,
    ledger_rows,
    start_central,
    uploading_agent_config,
)
from tests.faults.figures_support import Figure, pick
from tests.faults.mqtt_support import TimedPublisher

GATEWAY = "gw-r1"
T0_SPARE_MS = 1_767_225_600_000 + 20 * 3_600_000  # after the main stream's 17 h, same day


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


class _Armed:
    """The agent process, restarted with the next ``FLEETPULSE_FAULT`` point armed."""

    def __init__(self, config: Path, log: Path) -> None:
        self.agent = GroupAgentProcess(config, log)
        self.log = log
        self.armed: str | None = None

    def start(self, point: str | None) -> None:
        self.armed = point
        self.agent.env = {"FLEETPULSE_FAULT": point or ""}
        self.agent.start()

    def reached(self, point: str) -> int:
        """How often the log says the agent (or a child of it) reached ``point``."""
        return self.agent.log_text().count(f"fault point {point} reached")


def test_fault_points_and_sigkills_lose_nothing_centrally(
    broker: Broker, tmp_path: Path, figure: Figure
) -> None:
    """Every fault point (agent and central) plus random SIGKILLs: 0 missing, 0 in gold twice.

    The agent runs as ``fleetpulse agent run`` uploading to a real ``central serve``. After
    each crash it restarts with the next fault point armed (``FLEETPULSE_FAULT``), so every
    point fires ``rounds`` times while the stream goes on; SIGKILLs land at seeded random
    times in between. Central is SIGKILLed too and crashed mid-rename (its landing store's
    ``central_mid_rename`` point). Then the backlog drains, the agent stops cleanly and
    ``fleetpulse central consolidate`` builds gold.
    """
    total = pick(4000, 100_000)
    kills = pick(2, 50)
    rounds = pick(1, 4)  # times each fault point fires
    central_kills = pick(0, 5)
    rate = pick(1000, 800)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    points = sorted(FAULT_POINTS)
    assert "after_commit_before_ack" in points
    central_queue = ["central_mid_rename"] * rounds
    central_armed: str | None = central_queue.pop()
    central = start_central(tmp_path, GATEWAY, fault=central_armed)
    cfg = uploading_agent_config(
        tmp_path, broker.port, central.url, central.token_file, GATEWAY,
        central={"batch_max_rows": 2000, "retry_max_s": 2, "timeout_s": 10},
        schedule={"export_interval_s": 1, "upload_interval_s": 1, "dag_interval_s": 600,
                  "disk_check_s": 1},
    )  # fmt: skip
    db = tmp_path / "data" / "agent.sqlite3"
    run = _Armed(cfg, tmp_path / "agent.log")
    queue = [p for _ in range(rounds) for p in points]
    rng.shuffle(queue)
    messages = fleet_messages(total)
    spare = fleet_messages(50_000, t0=T0_SPARE_MS)  # published only if a point still waits
    sent_spare = 0
    duration = total / rate
    plan = sorted(rng.uniform(0.05, 0.95) * duration for _ in range(kills))
    central_plan = sorted(rng.uniform(0.1, 0.9) * duration for _ in range(central_kills))
    hits: Counter[str] = Counter()
    stored_at_kill: list[int] = []
    run.start(queue.pop())
    wait_for("the agent to subscribe", lambda: subscribed(db), 30)
    pub = TimedPublisher(broker.port, f"r1c-pub-{seed}")
    sender = threading.Thread(target=pub.publish, args=(messages, rate), daemon=True)
    started = time.monotonic()
    sender.start()
    deadline = started + duration + pick(120, 900)
    try:
        while (plan or central_plan or queue or central_queue or run.armed or central_armed
               or sender.is_alive()):  # fmt: skip
            assert time.monotonic() < deadline, f"fault points still waiting: {queue} {run.armed}"
            now = time.monotonic() - started
            if run.armed is not None and run.reached(run.armed) > hits[run.armed]:
                hits[run.armed] += 1
                # the agent (or its export worker) exited there: what is left of the unit is
                # killed, as systemd does before a restart
                run.agent.kill_group()
                run.start(queue.pop() if queue else None)
            elif not run.agent.alive():
                raise AssertionError(f"the agent exited by itself:\n{run.agent.log_text()[-3000:]}")
            if plan and now >= plan[0]:
                plan.pop(0)
                run.agent.kill_group()
                stored_at_kill.append(count(db))
                time.sleep(rng.uniform(0.0, 0.3))
                run.start(run.armed)  # the armed point stays armed
            server = central.server.proc
            if server is not None and server.poll() is not None:
                assert server.returncode == FAULT_EXIT, central.server.logs()[-3000:]
                hits["central_mid_rename"] += 1
                central_armed = central_queue.pop() if central_queue else None
                central.restart(central_armed)
            elif (central_plan and now >= central_plan[0]) or (
                not central_plan and central_queue and central_armed is None
            ):
                if central_plan:
                    central_plan.pop(0)
                hits["central SIGKILL"] += 1
                central_armed = central_armed or (central_queue.pop() if central_queue else None)
                central.restart(central_armed)
            waiting = queue or run.armed or central_queue or central_armed
            if not sender.is_alive() and waiting:
                # the stream is over but a point still waits for data to pass it
                chunk = spare[sent_spare : sent_spare + 100]
                assert chunk, "ran out of spare messages"
                pub.publish(chunk, 1000)
                sent_spare += len(chunk)
                time.sleep(0.3)
            time.sleep(0.02)
        sender.join()
        pub.wait_all(timeout=300)
        published = messages + spare[:sent_spare]
        wait_for("every reading in the buffer", lambda: count(db) >= len(published), 300, 0.2)
        wait_for("the backlog to drain to central", lambda: drained(db), 300, 0.2)
    finally:
        sender.join()
        pub.close()
        code = run.agent.terminate() if run.agent.alive() else -1
        central.server.stop()
    stored = agent_keys(db)
    landed = landed_keys(central.data)
    wanted = {_key(m) for m in published}
    broker_acked_missing = len(wanted - set(stored))
    missing = len(set(stored) - set(landed))
    landed_dupes = len(landed) - len(set(landed))
    files = landing_files(central.data)
    ledger = ledger_rows(central.data)
    leftovers = [p for p in (central.data / "landing").rglob("*") if p.name.startswith(".tmp-")]
    result = consolidate(central.config)
    gold = gold_device_day(central.data) if result.returncode == 0 else None
    expected = expected_per_device_day(set(stored))
    gold_readings = gold.readings if gold else -1
    gold_dupes = gold.duplicate_keys if gold else -1
    wrong_days = (
        sum(gold.per_device_day.get(k, 0) != n for k, n in expected.items()) if gold else -1
    )
    fired = ", ".join(f"{p} {hits[p]}" for p in [*points, "central_mid_rename"])
    figure(
        f"agent → central: {len(published):,} QoS 1 msgs, fault points fired ({fired}),"
        f" {kills} SIGKILLs of the agent (its process group, as systemd's restart),"
        f" {hits['central SIGKILL']} central SIGKILLs:"
        f" {missing} of {len(set(stored)):,} accepted readings missing centrally,"
        f" {landed_dupes} landed twice, {broker_acked_missing} broker-acked msgs missing"
        f" from the buffer; {len(files)} landed batches = {len(ledger)} ledger rows;"
        f" gold device_day: {gold_dupes} duplicate keys, Σ readings {gold_readings:,}"
        f" (distinct accepted {len(set(stored)):,}), {wrong_days} device-days off"
        f" (seed {seed})"
    )
    assert code == 0, run.agent.log_text()[-3000:]
    assert all(hits[p] >= rounds for p in [*points, "central_mid_rename"]), hits
    assert broker_acked_missing == 0 and len(stored) == len(set(stored))
    assert missing == 0 and landed_dupes == 0
    assert len(files) == len(ledger) and not leftovers, leftovers
    assert batch_states(db) == Counter({"uploaded": len(ledger)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert gold_dupes == 0 and gold_readings == len(set(stored)) and wrong_days == 0
    assert integrity(db) == "ok"


def _key(message: tuple[str, bytes]) -> tuple[str, str, int, int]:
    ts, device, kind, seq = key_of(message)
    return (device, kind, ts, seq)
