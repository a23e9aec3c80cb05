"""One consolidation: plan what changed, run the DAG, gate, publish, record (the I/O edge).

Incremental by default: only batches not yet consolidated are new; the days their rows can
change (event times widened by the longest gap tolerance and observation reach) are
recomputed, for the devices their gateways serve; days never published get every device.
``full`` recomputes everything from landing. Nothing new means nothing is written to the
gold tables (their Delta versions stay).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pyarrow.compute as pc
from ibis import _

from central.config import CentralConfig
from pipeline import DiskCache, GateFailed, StepFailed

from . import publish as P
from .compute import day_of_ms, day_start_ms, run_dag
from .dag import GOLD_TABLES, KpiSettings, SourceFile
from .engine import Engine, connect
from .errors import ConsolidateError, EngineError, GateRejected, StateError
from .progress import Progress
from .runs import write_record
from .silver import DAY_MS
from .sources import (
    BATCH_COLUMNS,
    V2_COLUMNS,
    BatchSource,
    LandedBatch,
    LedgerSource,
    batches_table,
    file_digest,
    read_registry,
)
from .state import Consolidated, State

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a consolidation did."""

    run_id: str
    status: str  # ok | nothing_new | gate_failed
    mode: str
    new_batches: list[str] = field(default_factory=list)
    days: list[date] = field(default_factory=list)
    published: list[P.Published] = field(default_factory=list)
    record_path: Path | None = None
    message: str = ""


@dataclass(frozen=True)
class Plan:
    """Which batches to read and which (device, day) pairs to recompute."""

    mode: str
    new: list[LandedBatch]
    read: list[LandedBatch]
    days: list[date]
    all_device_days: set[date]
    scope_devices: list[str]
    extents: dict[str, tuple[int | None, int | None]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "days": [d.isoformat() for d in self.days],
            "all_device_days": sorted(d.isoformat() for d in self.all_device_days),
            "scope_devices": len(self.scope_devices),
            "batches_read": len(self.read),
        }


def gold_dir(config: CentralConfig) -> Path:
    return Path(config.data_dir) / "gold"


def state_path(config: CentralConfig) -> Path:
    return Path(config.data_dir) / "consolidation" / "state.sqlite"


def _margin_ms(registry_rows: pa.Table, gap_k: float) -> int:
    """How far a reading reaches into neighbouring time: max(G, 2·h_max) over the fleet."""
    h = [30.0, *(x for x in registry_rows["heartbeat_s"].to_pylist() if x is not None)]
    k = [gap_k, 2.0, *(x for x in registry_rows["gap_k"].to_pylist() if x is not None)]
    return int(max(h) * max(k) * 1000) + 1


@dataclass(frozen=True)
class Extents:
    """What the plan needs to know of some batches' rows."""

    # per batch the [min, max] event time of all its rows (a kpi row's is its day's start):
    # which batches a recomputed day has to read
    spans: dict[str, Any]
    # the same over readings and observations only: the days their rows can change
    reach: list[tuple[int, int]]
    # the days of the agents' kpi rows: agent_device_day is recomputed for them
    kpi_days: set[date]
    # (device, gateway) pairs of the readings
    pairs: pa.Table


def _extents(
    engine: Engine, batches: Sequence[LandedBatch], *, incremental: bool = True
) -> Extents:
    """Per batch the event-time span of its rows, and what the plan derives from its rows.

    With ``incremental=False`` (a full run, which reads everything anyway) the pairs and the
    kpi days, two more passes over the batches, are not queried and come back empty.
    """
    from schemas.batch import RECORD_KPI

    from .bronze import epoch_ms

    no_pairs = pa.table(
        {"device_id": pa.array([], pa.string()), "gateway_id": pa.array([], pa.string())}
    )
    if not batches:
        return Extents({}, [], set(), no_pairs)
    t = engine.read_parquet([b.path for b in batches], BATCH_COLUMNS, V2_COLUMNS)
    t = t.mutate(batch_id=t.filename.re_extract(r"([^/\\]+)\.parquet$", 1))
    ts = epoch_ms(t.ts)
    recv = epoch_ms(t.received_at.fill_null(t.ts))
    event = (ts - recv > 300_000).ifelse(recv, ts)
    # an observation's end is exclusive: its last instant is a millisecond earlier
    hi = t.end_ts.isnull().ifelse(event, epoch_ms(t.end_ts) - 1)
    is_kpi = t.record_type == RECORD_KPI
    t = t.mutate(lo=event, hi=hi, rlo=is_kpi.ifelse(ibis.null("int64"), event),
                 rhi=is_kpi.ifelse(ibis.null("int64"), hi))  # fmt: skip
    agg = t.group_by("batch_id").aggregate(
        lo=_.lo.min(), hi=_.hi.max(), rlo=_.rlo.min(), rhi=_.rhi.max()
    )
    rows = engine.to_arrow(agg, "batch extents").to_pylist()
    spans = {r["batch_id"]: (r["lo"], r["hi"]) for r in rows}
    reach = [(r["rlo"], r["rhi"]) for r in rows if r["rlo"] is not None]
    if not incremental:
        return Extents(spans, reach, set(), no_pairs)
    pairs = engine.to_arrow(
        t.filter(t.device_id.notnull() & ~is_kpi).select("device_id", "gateway_id").distinct(),
        "new device-gateway pairs",
    )
    kpi_days = engine.to_arrow(
        t.filter(is_kpi & t.day.notnull()).select("day").distinct(), "kpi days"
    )
    return Extents(spans, reach, set(kpi_days["day"].to_pylist()), pairs)


def _day_range(lo: date, hi: date) -> list[date]:
    return [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]


def make_plan(
    engine: Engine,
    landed: list[LandedBatch],
    state: State,
    *,
    full: bool,
    margin_ms: int,
) -> Plan:
    consolidated = state.consolidated()
    by_id = {b.batch_id: b for b in landed}
    for bid, c in consolidated.items():
        b = by_id.get(bid)
        if b is None:
            raise StateError(
                f"batch {bid} was consolidated but is no longer in the ledger: "
                "run consolidate --full to rebuild gold from what is landed"
            )
        if b.sha256 != c.sha256:
            raise StateError(
                f"batch {bid} changed since it was consolidated (sha256 {c.sha256[:12]}… is "
                f"now {b.sha256[:12]}…): run consolidate --full"
            )
    if full:
        ext = _extents(engine, landed, incremental=False).spans
        spans = [v for v in ext.values() if v[0] is not None]
        days = (
            _day_range(day_of_ms(min(s[0] for s in spans)), day_of_ms(max(s[1] for s in spans)))
            if spans
            else []
        )
        return Plan("full", list(landed), list(landed), days, set(days), [], ext)

    new = [b for b in landed if b.batch_id not in consolidated]
    if not new:
        return Plan("incremental", [], [], [], set(), [], {})
    found = _extents(engine, new)
    ext, pairs = found.spans, found.pairs
    spans = [v for v in ext.values() if v[0] is not None]
    published = state.published_days()
    # The calendar runs from the first to the last day with data, as in a full run; the
    # days a new batch touches are its own days widened by the margin, within the calendar.
    every = spans + [
        (c.min_ms, c.max_ms)
        for c in consolidated.values()
        if c.min_ms is not None and c.max_ms is not None
    ]
    touched: set[date] = set()
    calendar: set[date] = set()
    if every:
        calendar = set(
            _day_range(day_of_ms(min(s[0] for s in every)), day_of_ms(max(s[1] for s in every)))
        )
    if found.reach:
        touched = calendar & set(
            _day_range(
                day_of_ms(min(s[0] for s in found.reach) - margin_ms),
                day_of_ms(max(s[1] for s in found.reach) + margin_ms),
            )
        )
    # a kpi row changes its own day only (agent_device_day): no margin around it
    touched |= calendar & found.kpi_days
    fresh = calendar - published
    days = sorted(touched | fresh)
    # devices a new batch can change: those its gateways ever reported (now or before)
    new_gateways = {b.gateway_id for b in new}
    known = state.known_device_gateways()
    scope = {
        d
        for d, g in zip(
            known["device_id"].to_pylist() + pairs["device_id"].to_pylist(),
            known["gateway_id"].to_pylist() + pairs["gateway_id"].to_pylist(),
            strict=True,
        )
        if g in new_gateways
    }
    read: list[LandedBatch] = []
    if days:
        lo = day_start_ms(days[0]) - margin_ms
        hi = day_start_ms(days[-1]) + DAY_MS + margin_ms
        for b in landed:
            span = ext.get(b.batch_id)
            if span is None and b.batch_id in consolidated:
                c = consolidated[b.batch_id]
                span = (c.min_ms, c.max_ms)
            if span is None or span[0] is None or span[1] is None:
                continue
            if span[0] <= hi and span[1] >= lo:
                read.append(b)
    return Plan("incremental", new, read, days, fresh, sorted(scope), ext)


def consolidate(
    config: CentralConfig,
    *,
    engine_name: str | None = None,
    full: bool = False,
    source: BatchSource | None = None,
    spark: Any = None,
    progress: Progress | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Outcome:
    """Consolidate what landed since the last run (everything with ``full``) and publish."""
    engine_name = engine_name or config.consolidate.engine
    data_dir = Path(config.data_dir)
    src_cfg = config.sources
    for key in ("registry", "firmware", "alerts"):
        path = getattr(src_cfg, key)
        if path is not None and not Path(path).exists():
            raise ConsolidateError(
                f"[sources] {key} = {str(path)!r} does not exist: fix the path or remove the key"
            )
    started = now()
    run_id = f"consolidate-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    settings = KpiSettings(
        gap_k=config.consolidate.gap_k, uptime_target=config.consolidate.uptime_target
    )
    source = source or LedgerSource(config.ledger_dsn, config.landing_url)
    digests = {k: file_digest(getattr(src_cfg, k)) for k in ("registry", "firmware", "alerts")}
    state = State(state_path(config))
    record: dict[str, Any] = {
        "run_id": run_id,
        "started_at": started.isoformat(),
        "engine": engine_name,
        "status": "running",
        "inputs": {
            "sources": {
                k: {
                    "path": None if getattr(src_cfg, k) is None else str(getattr(src_cfg, k)),
                    "sha256": v,
                }
                for k, v in digests.items()
            }
        },
    }
    engine: Engine | None = None
    try:
        landed = source.landed_batches()
        previous = state.source_digests()
        if not full and previous and previous != digests:
            changed = sorted(k for k in digests if previous.get(k) != digests[k])
            log.info("sources %s changed since the last run: recomputing everything", changed)
            full = True
        if not full and not state.consolidated():
            full = True  # first run
        if not full and all(b.batch_id in state.consolidated() for b in landed):
            # nothing new: no engine is started (a Spark session takes seconds to minutes)
            record["plan"] = {"mode": "incremental", "days": []}
            record["inputs"]["new_batches"] = []
            msg = "nothing new since the last run: gold tables unchanged"
            log.info("%s", msg)
            return _finish(
                data_dir, record, Outcome(run_id, "nothing_new", "incremental", message=msg), t0
            )
        registry_rows = (
            read_registry(Path(src_cfg.registry)) if src_cfg.registry is not None else None
        )
        margin = _margin_ms(
            registry_rows if registry_rows is not None else _empty_registry(), settings.gap_k
        )
        engine = connect(
            engine_name,
            work_dir=data_dir / "consolidation",
            spark_master=config.spark.master,
            spark_conf=config.spark.conf,
            spark=spark,
            duckdb_memory_limit=config.consolidate.duckdb_memory_limit or None,
        )
        plan = make_plan(engine, landed, state, full=full, margin_ms=margin)
        record["plan"] = plan.to_dict()
        record["inputs"]["new_batches"] = [
            {"batch_id": b.batch_id, "gateway_id": b.gateway_id, "sha256": b.sha256, "rows": b.rows}
            for b in plan.new
        ]
        if not plan.new:
            msg = "nothing new since the last run: gold tables unchanged"
            log.info("%s", msg)
            return _finish(
                data_dir, record, Outcome(run_id, "nothing_new", plan.mode, message=msg), t0
            )
        gdir = gold_dir(config)
        kept_dd = kept_fw = None
        if plan.mode == "incremental":
            old_days = [d for d in plan.days if d not in plan.all_device_days]
            scope = pa.array(plan.scope_devices, pa.string())
            kept_dd = _not_in_scope(P.read_rows(gdir, "device_day", old_days), scope)
            kept_fw = _not_in_scope(P.read_rows(gdir, "device_firmware_day", old_days), scope)
        landed_t = (
            engine.read_parquet([b.path for b in plan.read], BATCH_COLUMNS, V2_COLUMNS)
            if plan.read
            else engine.register("no_batches", _empty_batch())
        )
        cache = DiskCache(str(data_dir / "consolidation" / "cache"))
        result = run_dag(
            engine,
            landed=landed_t,
            batches=batches_table(plan.read),
            days=plan.days,
            settings=settings,
            sources={
                "registry": registry_rows if registry_rows is not None else SourceFile(None, None),
                "firmware": _source_file(src_cfg.firmware, digests["firmware"]),
                "alerts": _source_file(src_cfg.alerts, digests["alerts"]),
            },
            all_device_days=plan.all_device_days,
            scope_devices=plan.scope_devices,
            known_devices=None if plan.mode == "full" else state.known_devices(),
            known_device_gateways=None if plan.mode == "full" else state.known_device_gateways(),
            kept_device_day=kept_dd,
            kept_device_firmware_day=kept_fw,
            cache=cache,
            run_id=run_id,
            subscribers=[] if progress is None else [progress],
        )
        record["pipeline"] = result.record.to_dict()
        out = result.outputs
        tables = {
            "device_day": out["device_day_all"],
            "device_firmware_day": out["device_firmware_day_all"],
            **{n: out[n] for n in GOLD_TABLES if n not in ("device_day", "device_firmware_day")},
        }
        new_ids = [b.batch_id for b in plan.new]
        if plan.mode == "incremental":
            q = tables["quarantine"]
            keep = pc.and_(
                pc.equal(q["source"], "batch"),
                pc.is_in(q["batch_id"], value_set=pa.array(new_ids, pa.string())),
            )
            tables["quarantine"] = q.filter(pc.fill_null(keep, False))
        if progress is not None:
            progress.total += len(tables)
        published = P.publish(
            gdir,
            tables,
            full=plan.mode == "full",
            days=plan.days,
            new_batches=new_ids,
            on_table=None if progress is None else progress.advance,
        )
        record["published"] = [p.__dict__ for p in published]
        state.commit_run(
            run_id=run_id,
            full=plan.mode == "full",
            batches=[
                Consolidated(
                    b.batch_id,
                    b.gateway_id,
                    b.sha256,
                    b.rows,
                    *plan.extents.get(b.batch_id, (None, None)),
                )
                for b in plan.new
            ],
            devices=out["seen_devices_rows"],
            device_gateways=out["device_gateways_rows"],
            days=plan.days,
            digests=digests,
        )
        msg = (
            f"consolidated {len(plan.new)} new batch(es) ({plan.mode}); recomputed "
            f"{len(plan.days)} day(s); published {len(published)} table(s)"
        )
        log.info("%s", msg)
        return _finish(
            data_dir,
            record,
            Outcome(run_id, "ok", plan.mode, new_ids, plan.days, published, message=msg),
            t0,
        )
    except GateFailed as exc:
        if exc.record is not None:
            record["pipeline"] = exc.record.to_dict()
        msg = "validation gates failed, nothing was published: " + "; ".join(
            g.summary() for g in exc.results
        )
        _finish(
            data_dir,
            record,
            Outcome(run_id, "gate_failed", record.get("plan", {}).get("mode", "?"), message=msg),
            t0,
        )
        raise GateRejected(msg + f" (run record {run_id})", list(exc.results)) from None
    except StepFailed as exc:
        if exc.record is not None:
            record["pipeline"] = exc.record.to_dict()
        cause = exc.__cause__
        record["status"] = "failed"
        record["message"] = str(exc)
        write_record(data_dir, {**record, "duration_s": time.monotonic() - t0})
        if isinstance(cause, ConsolidateError):
            raise cause from None
        raise EngineError(f"{exc} (run record {run_id})") from exc
    except ConsolidateError as exc:
        record["status"] = "failed"
        record["message"] = str(exc)
        write_record(data_dir, {**record, "duration_s": time.monotonic() - t0})
        raise
    finally:
        if engine is not None:
            engine.close()
        state.close()


def _finish(data_dir: Path, record: dict[str, Any], outcome: Outcome, t0: float) -> Outcome:
    record["status"] = outcome.status
    record["message"] = outcome.message
    record["duration_s"] = time.monotonic() - t0
    outcome.record_path = write_record(data_dir, record)
    return outcome


def _source_file(path: Path | None, digest: str | None) -> SourceFile:
    return SourceFile(None if path is None else str(path), digest)


def _not_in_scope(table: pa.Table | None, scope: pa.Array) -> pa.Table | None:
    if table is None:
        return None
    return table.filter(pc.invert(pc.is_in(table["device_id"], value_set=scope)))


def _empty_registry() -> pa.Table:
    from .sources import REGISTRY_SCHEMA

    return REGISTRY_SCHEMA.empty_table()


def _empty_batch() -> pa.Table:
    from schemas.batch import BATCH_SCHEMA

    t = BATCH_SCHEMA.empty_table().select(list(BATCH_COLUMNS))
    return t.append_column("filename", pa.array([], pa.string()))


__all__ = ["Outcome", "Plan", "consolidate", "make_plan"]
