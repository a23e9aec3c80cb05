"""R8: the gateway's clock jumps by ±24 h while the agent ingests, exports and uploads.

The agent runs in-process (its real ``Service``: MQTT ingest from a private Mosquitto,
SQLite buffer, scheduler, export worker process, uploads to a real ``central serve``) with
a controllable wall clock: ``Service(clock_ms=...)`` is the one clock ingest (received
time, observation intervals), export (``--now-ms`` of the worker) and upload (backoff,
marks) read. The scheduler's own timer (APScheduler) keeps real time, so a jump of the
host clock's effect on timer periods is not modelled. Devices keep correct clocks: their
``ts`` is real time; the gateway's received time jumps.

Counted: readings lost or doubled (buffer, landing store, gold after consolidate), batch
file names in the outbox and landing store (ids are sequence numbers: no collision).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from agent.service import Service
from schemas import Reading
from tests.agent_support import (
    Message,
    config_of,
    count,
    key_of,
    publish_all,
    query,
    telemetry,
    wait_for,
)
from tests.brokers import Broker
from tests.faults.central_link_support import (
    agent_keys,
    batch_states,
    consolidate,
    drained,
    gold_device_day,
    landed_keys,
    landing_files,
    ledger_rows,
    start_central,
    uploading_agent_config,
)
from tests.faults.figures_support import Figure, pick
from tests.faults.proxy_support import TcpProxy

GATEWAY = "gw-r8"
DAY_MS = 86_400_000
# the gateway clock's offset from real time in each segment: +24 h, back, -24 h, back
OFFSETS = (0, DAY_MS, 0, -DAY_MS, 0)


class JumpClock:
    """Wall clock in ms plus an offset the test moves (a jump of the gateway's clock)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


class ClockedAgent:
    """The agent's real Service on a thread, with the test's clock."""

    def __init__(self, cfg_path: Path, clock: JumpClock) -> None:
        self.accepted = 0
        self.error: BaseException | None = None
        self.service = Service(config_of(cfg_path), clock_ms=clock, on_acked=self._acked)
        self.thread = threading.Thread(target=self._run, name="agent", daemon=True)

    def _acked(self, readings: Sequence[Reading], acks: Sequence[tuple[int, int]]) -> None:
        self.accepted += len(acks)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> ClockedAgent:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the agent did not stop within 60 s"
        if self.error is not None:
            raise self.error


def _segment(n: int, first: int, devices: int = 20) -> list[Message]:
    """``n`` readings with the devices' (correct) clocks: real time, 1 ms apart per device."""
    now = time.time_ns() // 1_000_000
    return [telemetry(f"dev-{i % devices:02d}", i, now + i) for i in range(first, first + n)]


def test_clock_jumps_lose_double_and_collide_nothing(
    broker: Broker, tmp_path: Path, figure: Figure
) -> None:
    per_segment = pick(200, 5000)
    central = start_central(tmp_path, GATEWAY)
    cfg = uploading_agent_config(
        tmp_path, broker.port, central.url, central.token_file, GATEWAY,
        central={"retry_max_s": 2, "timeout_s": 5, "batch_max_rows": max(50, per_segment // 4)},
        schedule={"export_interval_s": 1, "upload_interval_s": 1, "dag_interval_s": 2,
                  "disk_check_s": 1},
    )  # fmt: skip
    db = tmp_path / "data" / "agent.sqlite3"
    clock = JumpClock()
    agent = ClockedAgent(cfg, clock).start()
    published: list[Message] = []
    stalls: list[float] = []
    try:
        wait_for("the agent to subscribe", lambda: agent.service.subscribed, 30)
        for k, offset in enumerate(OFFSETS):
            clock.offset_ms = offset  # the jump
            batch = _segment(per_segment, k * per_segment)
            publish_all(broker.port, batch)
            published += batch
            n = len(published)
            wait_for("the segment in the buffer", lambda n=n: count(db) >= n, 60, 0.05)
            began = time.monotonic()
            wait_for(f"segment {k} (offset {offset // 3_600_000:+d} h) to reach central",
                     lambda: drained(db), 60, 0.05)  # fmt: skip
            stalls.append(time.monotonic() - began)
    finally:
        agent.stop()
        central.server.stop()
    stored = agent_keys(db)
    landed = landed_keys(central.data)
    wanted = {(d, k, ts, s) for ts, d, k, s in map(key_of, published)}
    lost = len(wanted - set(landed)) + len(wanted - set(stored))
    doubled = (len(stored) - len(set(stored))) + (len(landed) - len(set(landed)))
    files = landing_files(central.data)
    names = [f.name for f in files]
    ledger = ledger_rows(central.data)
    outbox = [str(p) for (p,) in query(db, "SELECT path FROM batches")]
    collisions = (
        (len(names) - len(set(names)))
        + (len(ledger) - len({b for b, _ in ledger}))
        + (len(outbox) - len(set(outbox)))
    )
    states = batch_states(db)
    result = consolidate(central.config)
    gold = gold_device_day(central.data) if result.returncode == 0 else None
    figure(
        f"clock jumps +24 h, -24 h, -24 h, +24 h with {len(published):,} QoS 1 msgs"
        f" ({per_segment:,} per segment):"
        f" {lost} lost, {doubled} doubled (buffer + landing store); {len(files)} batch files"
        f" landed, {collisions} name collisions (outbox, landing, ledger),"
        f" agent batches {dict(states)};"
        f" gold device_day Σ readings {gold.readings if gold else -1:,},"
        f" {gold.duplicate_keys if gold else -1} duplicate keys; longest segment drain"
        f" {max(stalls):.1f} s"
    )
    assert lost == 0 and doubled == 0 and collisions == 0
    assert states == {"uploaded": len(ledger)} and len(files) == len(ledger)
    assert result.returncode == 0, result.stderr[-3000:]
    assert gold is not None and gold.duplicate_keys == 0 and gold.readings == len(wanted)


RETRY_MAX_S = 2.0


def test_backward_jump_during_upload_backoff_resumes_within_the_cap(
    broker: Broker, tmp_path: Path, figure: Figure
) -> None:
    """Uploads fail (central unreachable) under a +24 h clock; the clock jumps back 24 h and
    central comes back: uploads must resume within ``retry_max_s`` + one upload period."""
    per_segment = pick(200, 2000)
    central = start_central(tmp_path, GATEWAY)
    proxy = TcpProxy(central.server.port).start()
    cfg = uploading_agent_config(
        tmp_path, broker.port, f"http://127.0.0.1:{proxy.port}", central.token_file, GATEWAY,
        central={"retry_max_s": RETRY_MAX_S, "timeout_s": 5},
        schedule={"export_interval_s": 1, "upload_interval_s": 1, "dag_interval_s": 600,
                  "disk_check_s": 1},
    )  # fmt: skip
    db = tmp_path / "data" / "agent.sqlite3"
    clock = JumpClock()
    clock.offset_ms = DAY_MS
    agent = ClockedAgent(cfg, clock).start()
    resumed: float | None = None
    limit = RETRY_MAX_S + 1.0 + 2.0  # the cap, one upload period, slack
    try:
        wait_for("the agent to subscribe", lambda: agent.service.subscribed, 30)
        stages = agent.service.stages
        assert stages is not None
        proxy.set("reset")
        publish_all(broker.port, _segment(per_segment, 0))
        wait_for("an upload to fail", lambda: stages.uploader.stats.failures > 0, 30, 0.05)
        clock.offset_ms = 0  # back 24 h, the backoff still pending
        proxy.set("pass")
        began = time.monotonic()
        deadline = began + limit
        while time.monotonic() < deadline:
            if drained(db):
                resumed = time.monotonic() - began
                break
            time.sleep(0.05)
    finally:
        agent.stop()
        proxy.close()
        central.server.stop()
    if resumed is not None:
        outcome = f"{resumed:.1f} s after central came back"
    else:
        outcome = (
            f"not within {limit:.0f} s (retry_max_s {RETRY_MAX_S:.0f}): parked until the clock"
            " catches up with the backoff deadline set under the +24 h clock"
        )
    figure(f"a backward jump of 24 h during an upload backoff: uploads resumed {outcome}")
    assert resumed is not None
