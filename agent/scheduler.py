"""The agent's background stages — DAG, export, upload, disk budget — on APScheduler.

Each stage has its own SQLite connection (WAL lets them read while ingest writes; writes
queue on the busy timeout) and runs on a scheduler thread, so a slow central or a long
DAG never blocks ingest. ``max_instances=1`` keeps a stage from overlapping itself and
``coalesce`` folds missed runs (a suspended gateway) into one. ``flush()`` runs every
stage now, in order, on the caller's thread (``fleetpulse agent flush``).

The DAG and the export need pyarrow and numpy (~150 MiB of RSS): their runs go to a
worker process (agent/worker.py) that exits 10 s after its last run and gives that
memory back, so this process never imports them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .buffer import Buffer
from .config import AgentConfig
from .disk import DiskGuard, Usage
from .errors import AgentError
from .upload import RoundResult, Uploader

log = logging.getLogger(__name__)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class StageStats:
    """Counters of the background stages, for metrics and logs."""

    dag_runs: int = 0
    dag_failures: int = 0
    dag_last_s: float | None = None
    dag_last_error: str | None = None
    export_batches: int = 0
    export_rows: int = 0
    export_failures: int = 0
    export_last_s: float | None = None
    last_error: dict[str, str] = field(default_factory=dict)


@dataclass
class FlushResult:
    """What ``flush()`` did, stage by stage."""

    dag_rows: int = 0
    exported: list[str] = field(default_factory=list)
    upload: RoundResult | None = None


class Stages:
    """The stages and their connections; callable one by one (tests) or on a schedule."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        clock_ms: Callable[[], int] = wall_ms,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self._clock_ms = clock_ms
        # the DAG has none: it runs in the worker process, with its own
        self._bufs = {n: Buffer.open(cfg.db_path) for n in ("export", "upload", "disk")}
        self.uploader = Uploader(
            cfg, self._bufs["upload"].conn, transport=transport, clock_ms=clock_ms, rand=rand
        )
        self.disk = DiskGuard(cfg, self._bufs["disk"].conn)
        self.stats = StageStats()

    def close(self) -> None:
        self.uploader.close()
        for b in self._bufs.values():
            b.close()

    def dag(self) -> int:
        """Run the local KPI DAG in a worker process; KPI rows written."""
        from .errors import DagError
        from .worker import spawn

        args = ["dag", "--db", str(self.cfg.db_path), "--gateway", self.cfg.gateway_id,
                "--gap-k", repr(self.cfg.registry.gap_k),
                "--record-dir", str(self.cfg.data_dir / "dag-runs"),
                "--now-ms", str(self._clock_ms())]  # fmt: skip
        if self.cfg.registry.path is not None:
            args += ["--registry", str(self.cfg.registry.path)]
        try:
            res = spawn(args, DagError, "DAG")
        except Exception as exc:
            self.stats.dag_failures += 1
            self.stats.dag_last_error = str(exc)
            raise
        self.stats.dag_runs += 1
        self.stats.dag_last_s = float(res["duration_s"])
        return int(res["rows"])

    def export(self, *, force_observations: bool = False) -> list[str]:
        """Export new readings and observation pieces; batch ids written."""
        from .export import export_pending

        started = time.perf_counter()
        try:
            done = export_pending(
                self.cfg.db_path,
                self._bufs["export"].conn,
                self.cfg.gateway_id,
                self.cfg.outbox,
                self.cfg.central.batch_max_rows,
                clock_ms=self._clock_ms,
                force_observations=force_observations,
            )
        except Exception:
            self.stats.export_failures += 1
            raise
        if done:
            self.stats.export_last_s = time.perf_counter() - started
        self.stats.export_batches += len(done)
        self.stats.export_rows += sum(b.readings for b in done)
        return [b.batch_id for b in done]

    def upload(self, *, force: bool = False) -> RoundResult:
        return self.uploader.run(force=force)

    def check_disk(self) -> Usage:
        return self.disk.check(self._clock_ms())

    def flush(self) -> FlushResult:
        """DAG, export, upload now, in that order (the disk check first frees space)."""
        out = FlushResult()
        self.check_disk()
        out.dag_rows = self.dag()
        out.exported = self.export(force_observations=True)
        out.upload = self.upload(force=True)
        return out


# The system clock is compared with the monotonic clock this often; a change of their
# difference larger than CLOCK_JUMP_S is a jump (NTP stepping a Pi without an RTC, an
# operator's `date -s`), not drift.
CLOCK_CHECK_S = 5.0
CLOCK_JUMP_S = 30.0


class Scheduler:
    """Runs the stages periodically on APScheduler's thread pool.

    APScheduler keeps next run times in wall-clock time: after the system clock steps back a
    day, every stage would wait a day. A watcher thread on the monotonic clock sees the jump
    and runs every stage at once, which re-anchors their periods on the new clock.
    """

    def __init__(
        self,
        stages: Stages,
        *,
        wall_s: Callable[[], float] = time.time,
        mono_s: Callable[[], float] = time.monotonic,
    ) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        # one line per job run at INFO is noise on a gateway's journal
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        # httpx logs every request at INFO; the uploader logs what matters itself
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.stages = stages
        cfg = stages.cfg.schedule
        self._sched = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._jobs: dict[str, tuple[Callable[[], Any], float]] = {
            "disk": (stages.check_disk, cfg.disk_check_s),
            "export": (self._export_then_upload, cfg.export_interval_s),
            "upload": (stages.upload, cfg.upload_interval_s),
            "dag": (stages.dag, cfg.dag_interval_s),
        }
        self._lock = threading.Lock()
        self._wall_s = wall_s
        self._mono_s = mono_s
        self._skew = wall_s() - mono_s()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.clock_jumps = 0

    def check_clock(self) -> float | None:
        """Seconds the system clock jumped since the last check (None: no jump); re-arms."""
        skew = self._wall_s() - self._mono_s()
        jump = skew - self._skew
        self._skew = skew
        if abs(jump) <= CLOCK_JUMP_S:
            return None
        self.clock_jumps += 1
        log.warning(
            "the system clock jumped %+.0f s: running every stage now so their periods follow"
            " the new clock",
            jump,
        )
        for name in self._jobs:
            self.wake(name)
        return jump

    def _watch_clock(self) -> None:
        while not self._stopping.wait(CLOCK_CHECK_S):
            try:
                self.check_clock()
            except Exception:  # the watcher must outlive a scheduler hiccup
                log.exception("clock check failed")

    def _export_then_upload(self) -> None:
        # a fresh batch need not wait a whole upload period
        if self.stages.export():
            self.wake("upload")

    def wake(self, name: str) -> None:
        """Run a job as soon as possible (no-op if it is running: it will see the work)."""
        from datetime import UTC, datetime

        job = self._sched.get_job(name)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def _guarded(self, name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
                self.stages.stats.last_error.pop(name, None)
            except AgentError as exc:
                self.stages.stats.last_error[name] = str(exc)
                log.error("%s: %s", name, exc)
            except Exception as exc:  # a stage's bug must not kill the scheduler thread
                self.stages.stats.last_error[name] = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed; it runs again at its next period", name)

        return run

    def start(self) -> None:
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        for name, (fn, every) in self._jobs.items():
            first = now + timedelta(seconds=min(every, 1.0) if name == "disk" else every)
            self._sched.add_job(
                self._guarded(name, fn), "interval", seconds=every, id=name, name=name,
                next_run_time=first,
            )  # fmt: skip
        self._sched.start()
        self._watcher = threading.Thread(target=self._watch_clock, name="clock", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=CLOCK_CHECK_S + 1)
        # running jobs finish (an upload is bounded by [central] timeout_s)
        self._sched.shutdown(wait=True)
