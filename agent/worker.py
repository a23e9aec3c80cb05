"""The export and DAG worker process: ``python -m agent.worker serve|export|rebuild|dag``.

Why a process: pyarrow, numpy and the ADBC driver take the agent from ~45 MiB of RSS to
~200 MiB once loaded, and a Python process never gives most of that back. The agent
(``spawn``) sends each export run, rebuild or DAG run to one ``serve`` worker as a JSON
line on its stdin and reads one JSON line back (``{"error": ...}`` when it failed). The
worker stays for the next run and exits after ``IDLE_EXIT_S`` without one, or at EOF
(the agent is gone): busy periods pay the start-up once, and between the default
periods no worker exists, so its memory is back with the system. Logs go to stderr,
which is the agent's (the journal). A fault point (agent/faults.py) exits with
``FAULT_EXIT`` here; the agent reports the crash as an ExportError/DagError and the next
run, in a new worker, finishes what was left (reserved batches). ``export``, ``rebuild``
and ``dag`` run once and exit (benchmarks, by hand).

Why two SQLite libraries, one at a time: ADBC's SQLite driver hands over Arrow columns
~5x faster than the ``sqlite3`` cursor, but it links its own copy of SQLite. Two copies
in one process break each other's POSIX locks: closing a file descriptor drops every
lock the *process* holds on that file, and neither copy knows of the other's (SQLite's
"how to corrupt" §2.2.1). So a run opens the buffer with one library at a time and
closes it before the other opens it: reserve with ``sqlite3`` (it needs ``BEGIN
IMMEDIATE`` and the existing transaction code), close; read the reserved id range with
ADBC, close; build and write the file with no database open; mark with ``sqlite3``,
close. Other processes (the agent's ingest) are unaffected: POSIX locks between
processes work whatever library took them. Without the driver (no wheel for 32-bit ARM)
the read falls back to the ``sqlite3`` cursor.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import logging
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import AgentError
from .faults import FAULT_ENV, FAULT_EXIT, fault_point

log = logging.getLogger(__name__)

# A run still going after this long is killed (its lock would stall the outbox).
WORKER_TIMEOUT_S = 1800.0
# The worker stays for the next run, and leaves after this long without one: a busy
# period (a backlog, a short export period) pays its ~0.25 s start-up once, while with the
# default periods (export 60 s, DAG 300 s) it is gone between runs and holds no memory.
IDLE_EXIT_S = 10.0
# ...and after this many runs, so memory the allocator keeps cannot pile up.
MAX_RUNS = 100
# One worker at a time per agent: an export and a DAG run that fall together queue, so the
# unit's memory limit has to fit the agent plus one worker, not two.
_ONE_AT_A_TIME = threading.Lock()
BUSY_TIMEOUT_MS = 5000
# Reading ids per slice: a 100k-row batch is read and converted as two slices in parallel.
SLICE_ROWS = 50_000


# -- the agent's side ------------------------------------------------------------------------


class _Kept:
    """The agent's worker process between runs: started on demand, gone when idle."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.env_key: tuple[tuple[str, str], ...] = ()

    def _start(self, env_key: tuple[tuple[str, str], ...]) -> subprocess.Popen[str]:
        env = dict(env_key)  # FLEETPULSE_FAULT must reach the worker
        # Arrow's default mimalloc pool keeps freed batch memory: the system allocator
        # returns it, which lowers the worker's peak by ~60 MiB at the same speed
        env.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
        # the worker imports the very package this agent runs from
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        cmd = [sys.executable, "-m", "agent.worker", "--log-level", str(level), "serve",
               "--idle-exit-s", str(IDLE_EXIT_S), "--max-runs", str(MAX_RUNS)]  # fmt: skip
        self.env_key = env_key
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1
        )
        return self.proc

    def run(self, args: Sequence[str]) -> tuple[str, int | None]:
        """Send one run; (its answer line, None) or ("", exit status) if the worker died."""
        env_key = tuple(sorted(os.environ.items()))
        for _ in range(2):
            proc = self.proc
            if proc is None or proc.poll() is not None or env_key != self.env_key:
                self.close()
                proc = self._start(env_key)
            assert proc.stdin is not None and proc.stdout is not None
            # a worker stuck past the limit is killed: its lock would stall the outbox
            timer = threading.Timer(WORKER_TIMEOUT_S, proc.kill)
            timer.start()
            try:
                proc.stdin.write(json.dumps({"args": list(args)}) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except OSError:
                line = ""
            finally:
                timer.cancel()
            if line:
                return line, None
            status = proc.wait()
            self.proc = None
            if status != 0:
                return "", status
            # exit 0 without an answer: it left idle just as the run was sent, and never
            # read it; a fresh worker takes it
        return "", 0

    def close(self) -> None:
        """End the worker (EOF on its stdin: it exits between runs)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_KEPT = _Kept()
atexit.register(_KEPT.close)


def spawn(args: Sequence[str], error: type[AgentError], what: str) -> dict[str, Any]:
    """Run ``args`` in the worker; its JSON answer, or ``error`` with the worker's reason."""
    try:
        with _ONE_AT_A_TIME:
            line, status = _KEPT.run(args)
    except OSError as exc:
        raise error(f"cannot start the {what} worker ({sys.executable}): {exc}") from exc
    answer: Any = None
    with contextlib.suppress(ValueError):
        answer = json.loads(line) if line else None
    if isinstance(answer, dict) and "error" in answer:
        raise error(str(answer["error"]))
    if isinstance(answer, dict):
        return answer
    if status == FAULT_EXIT:
        why = f"fault point {FAULT_ENV}={os.environ.get(FAULT_ENV, '?')}"
    elif status is not None and status < 0:
        name = signal.Signals(-status).name
        why = f"killed by {name}" + (
            " (out of memory, or over the time limit? see MemoryMax)" if name == "SIGKILL" else ""
        )
    else:
        why = "no answer"
    log.error("%s worker crashed (exit status %s, %s); the next run retries", what, status, why)
    raise error(f"{what} worker crashed (exit status {status}, {why})")


# -- the worker's side -----------------------------------------------------------------------


def _clock(now_ms: int) -> Callable[[], int]:
    """The agent's clock at the start, advancing with the worker's monotonic time."""
    start = time.monotonic()
    return lambda: now_ms + int((time.monotonic() - start) * 1000)


@contextlib.contextmanager
def _sqlite(db: Path) -> Iterator[sqlite3.Connection]:
    """A ``sqlite3`` connection that is closed before ADBC opens the file (see above)."""
    try:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # as the agent's own connections: a commit (reserve, mark) survives a power cut
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as exc:
        from .errors import StoreError

        raise StoreError(f"cannot open the buffer {db}: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


def _inputs(
    conn: sqlite3.Connection, seq: int
) -> tuple[list[tuple[int, int]], dict[str, Any], list[tuple[Any, ...]]]:
    """A reserved batch's recorded inputs: observation pieces, registry positions, KPI rows.

    The positions are device → (lat, lon); the KPI rows are the batch's copy (``batch_kpis``).
    """
    from .kpirows import read_batch_kpis

    obs = conn.execute(
        "SELECT start_ms, end_ms FROM batch_observations WHERE seq = ? ORDER BY start_ms, end_ms",
        (seq,),
    ).fetchall()
    # the registry cache (agent/registry.py), read here: that module loads pydantic
    rows = conn.execute(
        "SELECT device_id, lat, lon FROM devices WHERE lat IS NOT NULL AND lon IS NOT NULL"
    ).fetchall()
    return obs, {d: (float(a), float(b)) for d, a, b in rows}, read_batch_kpis(conn, seq)


def _slice(db: Path, lo: int, hi: int, gateway: str, locs: Any) -> tuple[Any, int, Any, Any]:
    """Readings ``lo..hi`` as batch rows; (rows, count, min ts_ms, max ts_ms)."""
    import pyarrow.compute as pc

    from . import arrowio

    raw = arrowio.read_range(db, lo, hi)
    mm = pc.min_max(raw["ts_ms"]).as_py() if raw.num_rows else {"min": None, "max": None}
    return arrowio.to_batch_rows(raw, gateway, locs), raw.num_rows, mm["min"], mm["max"]


def _build(
    db: Path,
    gateway: str,
    r: Any,
    obs: Any,
    locs: Any,
    kpi_copy: Any,
    pool: ThreadPoolExecutor | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Read (ADBC) and convert one reserved batch: (its table, what ``mark`` records of it).

    The id range is read and converted in slices of ``SLICE_ROWS`` on up to one thread per
    core (ADBC, Arrow kernels and Parquet release the GIL): ~1.6x on two idle cores.
    The slices depend only on the range, so a rebuild writes the same bytes.
    """
    import pyarrow as pa

    from . import arrowio, kpirows

    starts = range(r.first_id, r.last_id + 1, SLICE_ROWS)
    bounds = [(lo, min(lo + SLICE_ROWS - 1, r.last_id)) for lo in starts]
    bounds = bounds or [(r.first_id, r.last_id)]  # observations only: no readings
    with contextlib.ExitStack() as stack:
        if pool is None:
            threads = min(len(bounds), os.cpu_count() or 1)
            pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="slice"))
        parts = list(pool.map(lambda b: _slice(db, b[0], b[1], gateway, locs), bounds))
    n = sum(p[1] for p in parts)
    lows = [p[2] for p in parts if p[2] is not None]
    highs = [p[3] for p in parts if p[3] is not None]
    kpis = kpirows.kpi_rows(gateway, kpi_copy)
    table = pa.concat_tables([p[0] for p in parts] + [arrowio.observation_rows(gateway, obs), kpis])
    return table, {"seq": r.seq, "batch_id": r.batch_id, "readings": n,
                   "observations": len(obs), "path": str(r.path), "kpis": kpis.num_rows,
                   "ts_range": (min(lows, default=None), max(highs, default=None))}  # fmt: skip


def _write(r: Any, gateway: str, table: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Write a built batch's file (no database open): ``info`` with its size and sha256."""
    from .export import write_file

    size, digest = write_file(table, r.path, gateway, r.seq)
    return {**info, "bytes": size, "sha256": digest}


_PRELOAD = ("pyarrow.compute", "pyarrow.json", "pyarrow.parquet", "pygeohash", "schemas.batch",
            "agent.arrowio", "agent.kpirows", "adbc_driver_manager",
            "adbc_driver_sqlite")  # fmt: skip


def _preload() -> None:
    """Import what a run needs up front, so ``work_s`` times the run and not the imports."""
    for name in _PRELOAD:
        with contextlib.suppress(ImportError):  # the driver is optional (see above)
            importlib.import_module(name)


def export(a: argparse.Namespace) -> dict[str, Any]:
    """Finish reserved batches, then reserve, write and mark new ones (agent/export.py).

    Batches overlap: while batch n's file is written and fsynced on a thread of its own
    (no database open there), this thread reserves batch n+1 (``sqlite3``), then reads
    (ADBC) and converts it; then batch n is marked. Each batch still goes reserve → write
    → mark, files are written and marked in sequence order, and the two SQLite libraries
    still take turns (see above): only the file write runs beside them. A crash leaves at
    most two batches ``reserved`` (n and n+1); the next run finishes both.
    """
    from .export import Exported, Reserved, mark, reserve

    _preload()
    started = time.perf_counter()
    clock = _clock(a.now_ms)
    force = a.force_observations
    taken = 0  # the last sequence this run took

    def take() -> tuple[Reserved, Any, Any, Any] | None:
        """The next batch: one a crash left reserved, else a new one; with its inputs."""
        nonlocal force, taken
        r: Reserved | None
        with _sqlite(a.db) as conn:
            row = conn.execute(
                "SELECT seq, batch_id, first_id, last_id, path FROM batches"
                " WHERE state = 'reserved' AND seq > ? ORDER BY seq LIMIT 1",
                (taken,),
            ).fetchone()
            if row is not None:
                log.warning("batch %s was reserved but not written (crash?): writing it now",
                            row[1])  # fmt: skip
                r = Reserved(row[0], row[1], row[2], row[3], Path(row[4]))
            else:
                r = reserve(conn, a.gateway, a.outbox, a.max_rows, clock(),
                            force_observations=force)  # fmt: skip
                force = False
            if r is None:
                return None
            inputs = _inputs(conn, r.seq)
        taken = r.seq
        fault_point("after_reserve_before_write")
        return r, *inputs

    done: list[dict[str, Any]] = []
    with (
        ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="slice") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="write") as writer,
    ):
        cur = take() if a.max_batches > 0 else None
        built = _build(a.db, a.gateway, *cur, pool=pool) if cur is not None else None
        while cur is not None and built is not None:
            writing = writer.submit(_write, cur[0], a.gateway, *built)
            nxt = built = None
            failed: Exception | None = None
            try:
                if len(done) + 1 < a.max_batches:
                    nxt = take()
                    built = _build(a.db, a.gateway, *nxt, pool=pool) if nxt is not None else None
            except Exception as exc:  # batch n is written all the same: mark it, then fail
                failed = exc
            b = writing.result()  # a failed write is not marked; n+1 waits, reserved
            fault_point("after_export_before_mark")
            ts_range = b.pop("ts_range")
            with _sqlite(a.db) as conn:
                mark(conn, Exported(**{**b, "path": cur[0].path}), clock(), ts_range)
            done.append(b)
            if failed is not None:
                raise failed
            cur = nxt
    # the run's own time, without the interpreter's start and the imports (bench figures)
    return {"batches": done, "work_s": time.perf_counter() - started}


def rebuild(a: argparse.Namespace) -> dict[str, Any]:
    """Write an exported batch's file again from its recorded range."""
    from .errors import ExportError
    from .export import Reserved

    with _sqlite(a.db) as conn:
        row = conn.execute(
            "SELECT batch_id, first_id, last_id, path FROM batches WHERE seq = ?", (a.seq,)
        ).fetchone()
        if row is None:
            raise ExportError(f"no batch with sequence {a.seq} in the buffer")
        r = Reserved(a.seq, row[0], row[1], row[2], Path(row[3]))
        inputs = _inputs(conn, a.seq)
    return {"sha256": _write(r, a.gateway, *_build(a.db, a.gateway, r, *inputs))["sha256"]}


def dag(a: argparse.Namespace) -> dict[str, Any]:
    """One run of the local KPI DAG (agent/dag.py)."""
    from .dag import run_dag

    # not Buffer.open: the agent has set the schema up, and its set-up transaction (read,
    # then write) fails at once with "database is locked" when ingest commits in between
    with _sqlite(a.db) as conn:
        res = run_dag(conn, a.gateway, a.registry, a.gap_k, a.record_dir,
                      clock_ms=_clock(a.now_ms))  # fmt: skip
    return {"rows": res.rows, "days": [d.isoformat() for d in res.days],
            "window_rows": res.window_rows, "chunks": res.chunks,
            "duration_s": res.duration_s}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent.worker", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn in (("export", export), ("rebuild", rebuild), ("dag", dag)):
        s = sub.add_parser(name)
        s.set_defaults(fn=fn)
        s.add_argument("--db", type=Path, required=True)
        s.add_argument("--gateway", required=True)
    ex = sub.choices["export"]
    ex.add_argument("--outbox", type=Path, required=True)
    ex.add_argument("--max-rows", type=int, required=True)
    ex.add_argument("--max-batches", type=int, required=True)
    ex.add_argument("--now-ms", type=int, required=True)
    ex.add_argument("--force-observations", action="store_true")
    sub.choices["rebuild"].add_argument("--seq", type=int, required=True)
    sv = sub.add_parser("serve", help="take runs as JSON lines on stdin (the agent's way)")
    sv.add_argument("--idle-exit-s", type=float, default=IDLE_EXIT_S)
    sv.add_argument("--max-runs", type=int, default=MAX_RUNS)
    dg = sub.choices["dag"]
    dg.add_argument("--registry", type=Path, default=None)
    dg.add_argument("--gap-k", type=float, required=True)
    dg.add_argument("--record-dir", type=Path, default=None)
    dg.add_argument("--now-ms", type=int, required=True)
    return p


def _answer(a: argparse.Namespace) -> tuple[dict[str, Any], int]:
    try:
        return a.fn(a), 0
    except AgentError as exc:
        return {"error": str(exc)}, 1
    except Exception as exc:  # the agent gets the reason, whatever broke
        log.debug("worker failed", exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}, 1


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _exit_with_the_agent() -> None:
    """Exit at once when the agent dies, even mid-run (a crash the protocol recovers from).

    EOF on stdin ends an idle worker, but a running one would go on writing to the buffer
    while a restarted agent opens it; systemd kills the whole unit on a crash, other
    supervisors may not.
    """
    agent = os.getppid()

    def watch() -> None:
        while os.getppid() == agent:
            time.sleep(0.2)
        log.error("the agent (pid %d) is gone: exiting", agent)
        os._exit(1)

    threading.Thread(target=watch, name="agent-watch", daemon=True).start()


def serve(a: argparse.Namespace) -> int:
    """Runs sent by the agent, one JSON line each, until EOF, idle or ``--max-runs``."""
    _exit_with_the_agent()
    # systemd's stop (and Ctrl-C) signals the whole group: the agent stops its scheduler,
    # which lets a run in progress finish, then closes our stdin; until then, carry on
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = _parser()
    for _ in range(a.max_runs):
        ready, _, _ = select.select([sys.stdin], [], [], a.idle_exit_s)
        line = sys.stdin.readline() if ready else ""
        if not line:
            return 0  # the agent is gone or has nothing more: free the memory
        try:
            run = parser.parse_args(json.loads(line)["args"])
        except (ValueError, KeyError, TypeError, SystemExit) as exc:
            _say({"error": f"bad request to the worker: {exc}"})
            continue
        _say(_answer(run)[0])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (one JSON line on stdout; 0, or 1 with ``{"error": ...}``) or serve."""
    a = _parser().parse_args(argv)
    # numpy's OpenBLAS starts a thread per core that spins on and off: ~0.1 s of CPU per
    # export run here (a tenth of it); the worker does no linear algebra
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    logging.basicConfig(level=a.log_level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    if a.command == "serve":
        return serve(a)
    answer, status = _answer(a)
    _say(answer)
    return status


if __name__ == "__main__":
    sys.exit(main())
