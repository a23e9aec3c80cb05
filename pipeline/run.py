"""The runner: plan, execute in dependency order (optionally in parallel), gate, cache, record."""

from __future__ import annotations

import graphlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from .cache import Cache, cache_key, fingerprint
from .errors import CacheError, GateFailed, StepFailed
from .events import Event, EventBus, Subscriber
from .gates import Gate, GateResult, as_gate, evaluate, gates_on
from .graph import Graph
from .lineage import describe, schema_diff
from .record import RunRecord, StepRecord
from .steps import Step, as_step, collect

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Outputs of a run by name, and its record."""

    outputs: dict[str, Any]
    record: RunRecord
    gate_results: list[GateResult] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.outputs[name]

    @property
    def ok(self) -> bool:
        return self.record.status == "ok"


@dataclass
class _Outcome:
    value: Any = None
    fp: str | None = None
    cache: str = "off"
    error: BaseException | None = None
    started_at: str = ""
    duration_s: float = 0.0


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds")


class Pipeline:
    """A DAG of steps and gates. Build it once, run it many times.

    >>> def doubled(x): return 2 * x
    >>> Pipeline([doubled]).run({"x": 21})["doubled"]
    42
    """

    def __init__(
        self,
        steps: Iterable[Step | Callable[..., Any]] = (),
        *,
        gates: Iterable[Gate | Callable[[Any], Any]] = (),
        name: str = "pipeline",
    ) -> None:
        self.name = name
        self.graph = Graph(as_step(s) for s in steps)
        self.gates: list[Gate] = [as_gate(g) for g in gates]

    @classmethod
    def from_modules(cls, *modules: ModuleType, name: str | None = None) -> Pipeline:
        """Every public function defined in the modules is a step, every @gate a gate."""
        steps, gates = collect(modules)
        return cls(steps, gates=gates, name=name or modules[0].__name__.rsplit(".", 1)[-1])

    @property
    def steps(self) -> dict[str, Step]:
        return self.graph.steps

    def run(
        self,
        inputs: Mapping[str, Any] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        cache: Cache | None = None,
        max_workers: int = 1,
        subscribers: Iterable[Subscriber] = (),
        record_dir: str | None = None,
        run_id: str | None = None,
        raise_on_failure: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> RunResult:
        """Compute ``outputs`` (default: every step) from ``inputs``.

        Raises a GraphError before anything runs if the plan is impossible, StepFailed
        if a step raised and GateFailed if a gate rejected rows (both carry the record,
        written to ``record_dir`` first); ``raise_on_failure=False`` returns instead.
        """
        return _Run(
            self,
            dict(inputs or {}),
            outputs,
            cache,
            max_workers,
            EventBus(subscribers),
            run_id,
            clock,
            now,
        ).execute(record_dir, raise_on_failure)


class _Run:
    """State of one run; lives only for the duration of Pipeline.run."""

    def __init__(
        self,
        pipeline: Pipeline,
        inputs: dict[str, Any],
        outputs: Sequence[str] | None,
        cache: Cache | None,
        max_workers: int,
        bus: EventBus,
        run_id: str | None,
        clock: Callable[[], float],
        now: Callable[[], datetime],
    ) -> None:
        self.p = pipeline
        self.graph = pipeline.graph
        self.values = inputs
        self.provided = frozenset(inputs)
        self.plan = self.graph.plan(outputs, self.provided)
        self.requested = list(outputs) if outputs is not None else None
        self.cache = cache
        self.max_workers = max(1, max_workers)
        self.bus = bus
        self.clock = clock
        self.now = now
        started = now()
        self.record = RunRecord(
            run_id=run_id or f"{pipeline.name}-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}",
            pipeline=pipeline.name,
            started_at=_iso(started),
            max_workers=self.max_workers,
            requested=self.requested,
        )
        self.t0 = clock()
        self.fps: dict[str, str | None] = {}
        self.fp_lock = threading.Lock()
        self.blocked: dict[str, str] = {}
        self.failures: list[tuple[str, BaseException]] = []
        self.gate_results: list[GateResult] = []

    def emit(self, kind: Any, step: str | None = None, **data: Any) -> None:
        self.bus.emit(Event(kind, self.record.run_id, self.p.name, step, data))

    def fp_of(self, name: str) -> str | None:
        """Fingerprint of a node's value, computed once per run."""
        with self.fp_lock:
            if name in self.fps:
                return self.fps[name]
        fp = fingerprint(self.values[name])
        with self.fp_lock:
            self.fps[name] = fp
        return fp

    # -- one step -----------------------------------------------------------------------

    def compute(self, step: Step) -> _Outcome:
        out = _Outcome(started_at=_iso(self.now()))
        t = self.clock()
        try:
            args = {n: self.values[n] for n in step.inputs if n in self.values}
            key = None
            if self.cache is not None and step.cache:
                in_fps = {n: self.fp_of(n) for n in args}
                if any(v is None for v in in_fps.values()):
                    out.cache = "uncacheable"
                else:
                    key = cache_key(step, {n: v for n, v in in_fps.items() if v is not None})
                    found, value, fp = self.cache.lookup(step.name, key)
                    if found:
                        out.value, out.fp, out.cache = value, fp, "hit"
                        return out
                    out.cache = "miss"
            out.value = step.call(args)
            if key is not None and self.cache is not None:
                out.fp = fingerprint(out.value)
                try:
                    self.cache.store(step.name, key, out.value, out.fp)
                except CacheError as exc:
                    # The output is valid; a full or read-only cache must not fail the run.
                    log.warning("step %s: output not cached: %s", step.name, exc)
        except Exception as exc:  # reported through the record, raised by close()
            out.error = exc
        finally:
            out.duration_s = self.clock() - t
        return out

    def finish(self, step: Step, out: _Outcome) -> None:
        """Record one step's outcome, then run the gates on its output."""
        rec = StepRecord(
            name=step.name,
            status="ok",
            started_at=out.started_at,
            duration_s=out.duration_s,
            cache=out.cache,
        )
        shapes = {n: describe(self.values[n]) for n in step.inputs if n in self.values}
        rec.inputs = {n: s.to_dict() for n, s in shapes.items()}
        if out.error is not None:
            rec.status = "failed"
            rec.error = f"{type(out.error).__name__}: {out.error}"
            self.failures.append((step.name, out.error))
            self.record.steps.append(rec)
            self.emit("step_failed", step.name, error=rec.error, duration_s=out.duration_s)
            self.block(step.name, f"step {step.name}")
            log.warning("pipeline %s: step %s failed: %s", self.p.name, step.name, rec.error)
            return
        self.values[step.name] = out.value
        if out.fp is not None:
            with self.fp_lock:
                self.fps[step.name] = out.fp
        shape = describe(out.value)
        rec.output = shape.to_dict()
        for n, s in shapes.items():
            diff = schema_diff(s.schema, shape.schema)
            if diff is not None:
                rec.schema_diff[n] = diff
        if out.cache == "hit":
            rec.status = "cached"
        self.record.steps.append(rec)
        self.emit(
            "step_complete",
            step.name,
            duration_s=out.duration_s,
            cached=out.cache == "hit",
            output=rec.output,
        )
        self.check(step.name)

    def check(self, node: str) -> None:
        for g in gates_on(self.p.gates, node):
            res = evaluate(g, self.values[node])
            self.gate_results.append(res)
            self.record.gates.append(res.to_dict())
            if not res.passed:
                log.warning("pipeline %s: %s", self.p.name, res.summary())
                self.emit("gate_failed", node, gate=g.name, result=res.to_dict())
                self.block(node, f"gate {g.name}")

    def block(self, node: str, cause: str) -> None:
        for n in self.graph.downstream(node, self.plan):
            self.blocked.setdefault(n, cause)

    def skip(self, name: str) -> None:
        self.record.steps.append(
            StepRecord(name=name, status="blocked", blocked_by=self.blocked[name])
        )

    # -- the whole run --------------------------------------------------------------------

    def execute(self, record_dir: str | None, raise_on_failure: bool) -> RunResult:
        self.emit("pipeline_start", steps=list(self.plan), inputs=sorted(self.provided))
        for name in sorted(self.provided):
            self.record.inputs[name] = describe(self.values[name]).to_dict()
            if name in self.graph.consumers():
                self.check(name)
        deps = self.graph.dependencies(self.provided, self.plan)
        sorter = graphlib.TopologicalSorter(deps)
        sorter.prepare()
        if self.max_workers == 1:
            while sorter.is_active():
                for name in sorter.get_ready():
                    self.run_one(name)
                    sorter.done(name)
        else:
            self.run_parallel(sorter)
        return self.close(record_dir, raise_on_failure)

    def run_one(self, name: str) -> None:
        if name in self.blocked:
            self.skip(name)
            return
        step = self.graph.steps[name]
        self.emit("step_start", name, inputs=list(step.inputs))
        self.finish(step, self.compute(step))

    def run_parallel(self, sorter: graphlib.TopologicalSorter[str]) -> None:
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix=self.p.name) as pool:
            running: dict[Future[_Outcome], str] = {}
            while sorter.is_active():
                for name in sorter.get_ready():
                    if name in self.blocked:
                        self.skip(name)
                        sorter.done(name)
                        continue
                    step = self.graph.steps[name]
                    self.emit("step_start", name, inputs=list(step.inputs))
                    running[pool.submit(self.compute, step)] = name
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    # Bookkeeping happens on this thread only: values, record and gates.
                    self.finish(self.graph.steps[name], fut.result())
                    sorter.done(name)

    def close(self, record_dir: str | None, raise_on_failure: bool) -> RunResult:
        rec = self.record
        rec.finished_at = _iso(self.now())
        rec.duration_s = self.clock() - self.t0
        failed_gates = [g for g in self.gate_results if not g.passed]
        rec.status = "failed" if self.failures or failed_gates else "ok"
        if self.cache is not None:
            rec.cache = {
                "hits": sum(s.cache == "hit" for s in rec.steps),
                "misses": sum(s.cache == "miss" for s in rec.steps),
            }
        for name in self.provided:
            if name in self.fps:
                rec.inputs[name]["fingerprint"] = self.fps[name]
        if record_dir is not None:
            rec.write(record_dir)
        wanted = self.requested if self.requested is not None else self.plan
        outputs = {n: self.values[n] for n in wanted if n in self.values}
        self.emit("pipeline_complete", status=rec.status, duration_s=rec.duration_s, record=rec)
        log.info(
            "pipeline %s run %s %s in %.3fs (%d steps, %d cache hits)",
            self.p.name,
            rec.run_id,
            rec.status,
            rec.duration_s,
            len(rec.steps),
            rec.cache["hits"],
        )
        if raise_on_failure and self.failures:
            name, exc = self.failures[0]
            raise StepFailed(
                f"step {name!r} failed: {type(exc).__name__}: {exc}"
                + (f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""),
                name,
                rec,
            ) from exc
        if raise_on_failure and failed_gates:
            raise GateFailed("; ".join(g.summary() for g in failed_gates), failed_gates, rec)
        return RunResult(outputs, rec, self.gate_results)
