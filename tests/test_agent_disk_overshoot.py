"""How far usage overshoots ``[storage] max_disk_bytes`` while ingest runs flat out.

The periodic check (``disk_check_s``) alone lets ingest write for a whole period past the
budget; the commit counter (agent/disk.py ``DiskGuard.note_commit``) runs a check as soon
as the rows committed since the last one could have used the headroom it measured. The
test ingests 60,000 messages as fast as the agent takes them, with the default 5 s check
period and a 4 MiB budget, and samples the bytes on disk (buffer file + WAL + outbox)
every few milliseconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

from agent.disk import usage
from tests.agent_support import (
    AgentProcess,
    Publisher,
    count,
    fleet_messages,
    integrity,
    subscribed,
    wait_for,
)
from tests.agent_upload_support import agent_config, cfg_of
from tests.brokers import Broker

MiB = 1024 * 1024
BUDGET = 4 * MiB
# Measured here: 1.9-3.3 MB (47-79 % of the budget) with the periodic check alone,
# 0.04-0.11 MB with the commit counter. The bound leaves room for a slow machine: the
# commit that crosses, the WAL frames of a checkpoint, one early check's latency.
ALLOWED_OVERSHOOT = 512 * 1024


class DiskSampler:
    """The agent's usage (agent/disk.py ``usage``: pages in use + WAL + outbox, what the
    budget is measured in) and the bytes on disk (buffer file + WAL + outbox), sampled
    every 2 ms through a read-only connection of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.db = data_dir / "agent.sqlite3"
        self.max_usage = 0
        self.max_on_disk = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def on_disk(self) -> int:
        total = 0
        for p in (self.db, self.db.with_name(self.db.name + "-wal"),
                  *self.data_dir.glob("outbox/*")):  # fmt: skip
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def _run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            while not self._stop.is_set():
                u = usage(conn, self.db, self.data_dir / "outbox").total
                self.max_usage = max(self.max_usage, u)
                self.max_on_disk = max(self.max_on_disk, self.on_disk())
                self.samples += 1
                time.sleep(0.002)
        finally:
            conn.close()


def test_fast_ingest_overshoots_the_budget_by_at_most_a_bound(
    tmp_path: Path, broker: Broker
) -> None:
    config = agent_config(
        tmp_path, mqtt_port=broker.port,
        schedule={"export_interval_s": 3600, "dag_interval_s": 3600, "upload_interval_s": 3600},
        storage={"max_disk_bytes": BUDGET, "on_full": "backpressure"},
    )  # fmt: skip
    cfg = cfg_of(config)
    messages = fleet_messages(60_000, devices=200)
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    wait_for("the agent's subscription", lambda: subscribed(cfg.db_path), 30)
    pub = Publisher(broker.port, client_id="overshoot-pub", inflight=1000)
    try:
        with DiskSampler(cfg.data_dir) as sampler:
            started = time.monotonic()
            pub.publish(messages)
            pub.wait_all(180)
            wait_for("the alarm", lambda: "disk budget reached" in agent.log_text(), 60)
            # ingest holds: nothing more is committed
            held = count(cfg.db_path)
            time.sleep(1.0)
            assert count(cfg.db_path) == held
            took = time.monotonic() - started
        assert 0 < held < 60_000
        assert agent.terminate() == 0
    finally:
        pub.close()
        if agent.alive():
            agent.kill()
    assert integrity(cfg.db_path) == "ok"
    overshoot = sampler.max_usage - BUDGET
    print(
        f"\ndisk budget {BUDGET} bytes: max usage {sampler.max_usage} bytes, overshoot "
        f"{overshoot} bytes ({overshoot / BUDGET:.0%}); max on disk {sampler.max_on_disk} "
        f"bytes; {held} readings held after {took:.1f} s; {sampler.samples} samples"
    )
    assert overshoot <= ALLOWED_OVERSHOOT, (
        f"usage overshot the {BUDGET}-byte budget by {overshoot} bytes"
    )
    assert sampler.max_on_disk <= BUDGET + ALLOWED_OVERSHOOT


def test_commit_counter_checks_early_and_holds_before_the_budget(tmp_path: Path) -> None:
    """The counter with a real buffer: rows committed as ingest would, ``note_commit`` after
    each COMMIT, no periodic check at all: the early checks alone stop it near the budget."""
    from agent.buffer import Buffer
    from agent.disk import DiskGuard
    from tests.agent_upload_support import add_readings, reading_row

    budget = 2 * MiB
    config = agent_config(tmp_path, storage={"max_disk_bytes": budget})
    cfg = cfg_of(config)
    add_readings(cfg, (reading_row(i) for i in range(2000)))
    buf = Buffer.open(cfg.db_path)
    try:
        guard = DiskGuard(cfg, buf.conn)
        start = guard.check(0).total
        assert start < budget and not guard.full.is_set()
        i, most = 2000, start
        while not guard.full.is_set() and i < 200_000:
            add_readings(cfg, (reading_row(j) for j in range(i, i + 200)))
            i += 200
            guard.note_commit(200)
            # the early check runs on its own thread; let it finish as a busy ingest would
            # go on meanwhile only for its next commit
            wait_for("an early check", lambda: not guard._kicked, 10, every=0.001)
            most = max(most, usage(buf.conn, cfg.db_path, cfg.outbox).total)
        assert guard.full.is_set(), "the budget was never reached"
        assert guard.early_checks >= 2
        assert most - budget <= 256 * 1024, (most, budget)
        # the alarm is real (not a counter's hold): a check confirms it
        guard.check(0)
        assert guard.full.is_set()
    finally:
        buf.close()


def test_a_counter_hold_is_let_go_when_the_check_finds_room(tmp_path: Path) -> None:
    from agent.buffer import Buffer
    from agent.disk import DiskGuard

    config = agent_config(tmp_path, storage={"max_disk_bytes": 64 * MiB})
    cfg = cfg_of(config)
    buf = Buffer.open(cfg.db_path)
    try:
        guard = DiskGuard(cfg, buf.conn)
        guard.check(0)
        # the early check waits for the test, so the hold is seen before the check lets go
        go = threading.Event()
        measure = guard._check
        guard._check = lambda now_ms: (go.wait(10), measure(now_ms))[1]  # type: ignore[method-assign]
        # a burst the estimate (1 KiB a row while the buffer is nearly empty) says fills it
        guard.note_commit(70_000)
        assert guard.full.is_set()  # held at once, on the ingest thread
        go.set()
        wait_for("the early check", lambda: not guard.full.is_set(), 10, every=0.001)
        assert guard.early_checks == 1  # nothing was written: room after all, no alarm
    finally:
        buf.close()
