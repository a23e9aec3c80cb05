"""The stage scheduler follows a system clock that jumps (APScheduler alone would wait it out)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.scheduler import CLOCK_JUMP_S, Scheduler, Stages
from tests.agent_upload_support import agent_config, cfg_of

DAY_S = 86_400.0


class WallClock:
    """The real wall clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


def test_a_backward_jump_runs_every_stage_now(tmp_path: Path) -> None:
    # every period long: without the watcher nothing would run during the test
    cfg = cfg_of(agent_config(tmp_path, schedule={
        "dag_interval_s": 600, "export_interval_s": 600, "upload_interval_s": 600,
        "disk_check_s": 600,
    }))  # fmt: skip
    stages = Stages(cfg)
    wall = WallClock()
    sched = Scheduler(stages, wall_s=wall)
    sched.start()
    try:
        jobs = {j.id: j.next_run_time for j in sched._sched.get_jobs()}
        soon = datetime.now(UTC) + timedelta(seconds=60)
        assert all(t > soon for n, t in jobs.items() if n != "disk"), jobs
        assert sched.check_clock() is None  # no jump, no re-arm
        wall.offset_s += CLOCK_JUMP_S / 2  # drift-sized: still no jump
        assert sched.check_clock() is None
        wall.offset_s -= DAY_S
        jump = sched.check_clock()
        assert jump is not None and abs(jump + DAY_S) < 1.0  # the drift was absorbed
        assert sched.clock_jumps == 1
        # every stage runs at once (the DAG in its worker process: allow for its start-up)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and stages.stats.dag_runs == 0:
            time.sleep(0.1)
        assert stages.stats.dag_runs == 1, stages.stats
        after = {j.id: j.next_run_time for j in sched._sched.get_jobs()}
        # ... and each period starts again from the run: about 600 s ahead, not 600 s + a day
        ahead = datetime.now(UTC) + timedelta(seconds=700)
        assert all(t < ahead for t in after.values()), after
    finally:
        sched.stop()
        stages.close()
