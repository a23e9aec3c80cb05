"""One simulator run: plan the fleet, write registry/Avro/truth, publish, record what was sent.

``prepare`` writes every file a pipeline needs before a message flows (the demo starts its
agents with the registry), ``publish_plan`` sends the messages and rewrites
``truth/scenario.json`` with the counts; ``simulate`` does both.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygeohash

from . import outputs
from .alerts import firmware_installs, fleet_alerts
from .errors import ScenarioError
from .fleet import DeviceSpec, Segment, plan_fleet, timeline
from .messages import DROP, LAST_WILL, WILL, Msg, estimated_messages, fleet_messages, kind_of
from .publish import CLIENTS, Publisher, pace, parse_broker_url
from .scenario import Scenario, load_scenario
from .truth import device_days, overall_by, rollup

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a publishing run is: messages so far, the estimate, simulated time, wall time."""

    published: int
    estimated: int
    sim_ms: int
    elapsed_s: float
    final: bool = False


@dataclass
class Plan:
    """A planned run: the scenario with overrides applied, devices, timelines, output folder."""

    scenario: Scenario
    specs: list[DeviceSpec]
    timelines: list[list[Segment]]
    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> Iterator[Msg]:
        return fleet_messages(self.specs, self.timelines, self.scenario)

    @property
    def sites(self) -> list[str]:
        return [s.name for s in self.scenario.sites]

    @property
    def device_days(self) -> float:
        return sum(
            (hi - lo) / 86400
            for lo, hi in (
                d.eligible(self.scenario.start_s, self.scenario.end_s) for d in self.specs
            )
        )


@dataclass(frozen=True)
class SimResult:
    """What a run did; ``counts`` are per label (``telemetry``, ``status.lwt``, ...)."""

    out_dir: Path
    scenario: str
    devices: int
    days: int
    seed: int
    counts: dict[str, int]
    by_kind: dict[str, int]
    published: int
    elapsed_s: float
    messages_per_device_day: float
    sites: list[str]
    gateways: dict[str, list[str]]
    faulty_firmware: str | None
    fleet_uptime_by_day: dict[str, float | None]

    @property
    def rate(self) -> float:
        """Messages published per second of wall time."""
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0


def resolve(
    scenario: str | Path | Scenario,
    devices: int | None = None,
    days: int | None = None,
    seed: int | None = None,
) -> Scenario:
    """The scenario (name, path or model) with overrides applied and validated."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    return sc.with_overrides(devices=devices, days=days, seed=seed)


def prepare(
    scenario: str | Path | Scenario,
    out_dir: Path,
    devices: int | None = None,
    days: int | None = None,
    seed: int | None = None,
) -> Plan:
    """Plan the fleet and write registry.csv, the Avro files and truth/ into ``out_dir``."""
    sc = resolve(scenario, devices, days, seed)
    if sc.end_s * 1000 > time.time() * 1000 + 300_000:
        log.warning(
            "the simulated days end after now (%s); agents will flag the readings as skewed "
            "and use receive time: choose an earlier scenario start",
            datetime.fromtimestamp(sc.end_s, tz=UTC).isoformat(),
        )
    specs = plan_fleet(sc)
    firmware = {f.version: f for f in sc.firmware}
    timelines = [timeline(d, firmware, sc.start_s, sc.end_s, sc.seed) for d in specs]
    plan = Plan(sc, specs, timelines, Path(out_dir))
    truth_dir = plan.out_dir / "truth"
    outputs.write_registry(plan.out_dir / "registry.csv", specs)
    outputs.write_firmware(
        plan.out_dir / "firmware_versions.avro", firmware_installs(specs, timelines), sc.seed
    )
    outputs.write_alerts(plan.out_dir / "alerts.avro", fleet_alerts(specs, timelines, sc), sc.seed)
    outputs.write_device_day(
        truth_dir / "device_day.parquet", device_days(specs, timelines, sc.start_s, sc.days)
    )
    for by in ("fleet", "firmware", "site"):
        outputs.write_rows(
            truth_dir / f"{by}_day.parquet", rollup(specs, timelines, sc.start_s, sc.days, by)
        )
    plan.summary = scenario_summary(plan)
    outputs.write_json(truth_dir / "scenario.json", plan.summary)
    log.info(
        "planned %d devices x %d days of %s (seed %d) into %s",
        len(specs),
        sc.days,
        sc.name,
        sc.seed,
        plan.out_dir,
    )
    return plan


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat().replace("+00:00", "Z")


def scenario_summary(plan: Plan) -> dict[str, Any]:
    """The truth/scenario.json document (before any message counts are known)."""
    sc, specs, tls = plan.scenario, plan.specs, plan.timelines
    fleet_day = rollup(specs, tls, sc.start_s, sc.days, "fleet")
    by_day = {str(r["day"]): r["uptime"] for r in fleet_day}
    first_rollout = min((r.start_h for r in sc.rollouts), default=None)
    last_rollout = max((r.start_h + r.duration_h for r in sc.rollouts), default=None)

    def window(rows: list[dict[str, Any]]) -> float | None:
        up = sum(int(r["up_s"]) for r in rows)
        down = sum(int(r["down_s"]) for r in rows)
        return up / (up + down) if up + down else None

    before = after = None
    if first_rollout is not None and last_rollout is not None:
        before = window([r for i, r in enumerate(fleet_day) if (i + 1) * 24 <= first_rollout])
        after = window([r for i, r in enumerate(fleet_day) if i * 24 >= last_rollout])
    counts_per_site = Counter(d.site for d in specs)
    fw_end: Counter[str] = Counter(segs[-1].firmware for segs in tls if segs)
    return {
        "name": sc.name,
        "description": sc.description,
        "seed": sc.seed,
        "devices": len(specs),
        "days": sc.days,
        "start": _iso(sc.start_s),
        "end": _iso(sc.end_s),
        "faulty_firmware": sc.faulty_firmware,
        "firmware": {
            f.version: {
                "expected_uptime": round(f.expected_uptime(), 6),
                "devices_at_start": sum(1 for d in specs if d.firmware == f.version),
                "devices_at_end": fw_end.get(f.version, 0),
                "crash_loop": f.crash_loop is not None,
            }
            for f in sc.firmware
        },
        "rollouts": [
            {
                "firmware": r.firmware,
                "start": _iso(sc.start_s + int(r.start_h * 3600)),
                "end": _iso(sc.start_s + int((r.start_h + r.duration_h) * 3600)),
                "share": r.share,
                "devices": sum(1 for d in specs if d.update_to == r.firmware),
            }
            for r in sc.rollouts
        ],
        "sites": [
            {
                "name": s.name,
                "gateway": s.gateway,
                "lat": s.lat,
                "lon": s.lon,
                "geohash5": pygeohash.encode(s.lat, s.lon, precision=5),
                "devices": counts_per_site.get(s.name, 0),
            }
            for s in sc.sites
        ],
        "gateways": {
            gw: {"sites": sites, "topic_filters": [f"fleet/{s}/#" for s in sites]}
            for gw, sites in sc.gateways().items()
        },
        "heartbeats": dict(sorted(Counter(str(d.heartbeat_s) for d in specs).items())),
        "special_devices": {
            "lossy": {d.device_id: d.loss_rate for d in specs if d.loss_rate},
            "roaming": [
                {
                    "device_id": d.device_id,
                    "home": d.site,
                    "visits": d.roam.site,
                    "start": _iso(d.roam.start_s),
                    "end": _iso(d.roam.end_s),
                }
                for d in specs
                if d.roam is not None
            ],
            "skewed": {d.device_id: d.skew_ms / 1000 for d in specs if d.skew_ms},
            "rfc3339_timestamps": [d.device_id for d in specs if d.rfc3339],
            "commissioned_late": [d.device_id for d in specs if d.commissioned_s > sc.start_s],
            "decommissioned_early": [d.device_id for d in specs if d.decommissioned_s is not None],
        },
        "truth": {
            "fleet_uptime_by_day": by_day,
            "fleet_uptime_before_rollout": before,
            "fleet_uptime_after_rollout": after,
            "uptime_by_firmware": overall_by(specs, tls, "firmware"),
            "uptime_by_site": overall_by(specs, tls, "site"),
            "device_days": round(plan.device_days, 3),
        },
        "messages": None,
        "run": None,
    }


def _summarise_counts(counts: Counter[str], device_days: float) -> dict[str, Any]:
    by_kind: Counter[str] = Counter()
    for label, n in counts.items():
        kind = kind_of(label)
        if kind is not None:
            by_kind[kind] += n
    published = sum(by_kind.values())
    return {
        "published": published,
        "by_kind": dict(sorted(by_kind.items())),
        "by_label": dict(sorted(counts.items())),
        "malformed": sum(n for k, n in counts.items() if k.startswith("malformed.")),
        "duplicates": sum(n for k, n in counts.items() if k.startswith("duplicate.")),
        "dropped_lossy": sum(n for k, n in counts.items() if k.startswith("dropped.")),
        "wills": counts.get("status.lwt", 0),
        "per_device_day": round(published / device_days, 1) if device_days else None,
    }


def publish_plan(
    plan: Plan,
    broker_url: str | None,
    speed: float | None = None,
    progress: Callable[[Progress], None] | None = None,
    client: str = "wire",
) -> SimResult:
    """Publish the plan's messages (or only count them when ``broker_url`` is None)."""
    if speed is not None and speed <= 0:
        raise ScenarioError(f"--speed {speed}: must be a positive multiple of real time")
    addr = parse_broker_url(broker_url) if broker_url is not None else None
    sc = plan.scenario
    estimated = estimated_messages(plan.specs, sc)
    publisher = None
    if addr is not None:
        publisher = Publisher(addr, f"fleetpulse-sim-{os.getpid()}-{sc.seed}", client=client)
        publisher.connect()
    counts: Counter[str] = Counter()
    started = time.monotonic()
    last_report = started
    wait = pace(speed, sc.start_s * 1000, publisher.idle if publisher else time.sleep)
    ids = [d.device_id for d in plan.specs]
    done = 0
    try:
        for m in plan.messages():
            counts[m.label] += 1
            if m.action == DROP:
                continue
            done += 1
            if publisher is not None:
                wait(m.ms)
                dev = ids[m.device]
                if m.action in (WILL, LAST_WILL):
                    client_id = f"fpsim-lwt-{os.getpid()}-{dev}-{m.n}"
                    publisher.will(m.topic, m.payload, dev, client_id, last=m.action == LAST_WILL)
                else:
                    publisher.publish(m.topic, m.payload, m.retain, dev)
            if progress is not None and done % 512 == 0:
                now = time.monotonic()
                if now - last_report >= PROGRESS_EVERY_S:
                    last_report = now
                    progress(Progress(done, estimated, m.ms, now - started))
        if publisher is not None:
            publisher.flush()
    finally:
        if publisher is not None:
            publisher.close()
    elapsed = time.monotonic() - started
    if progress is not None:
        progress(Progress(done, estimated, sc.end_s * 1000, elapsed, final=True))
    messages = _summarise_counts(counts, plan.device_days)
    run = {
        "broker": addr.url if addr is not None else None,
        "speed": speed,
        "elapsed_s": round(elapsed, 3),
        "publish_rate_per_s": round(done / elapsed, 1) if elapsed > 0 and addr else None,
        "finished_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
    }
    plan.summary = {**plan.summary, "messages": messages, "run": run}
    outputs.write_json(plan.out_dir / "truth" / "scenario.json", plan.summary)
    return SimResult(
        out_dir=plan.out_dir,
        scenario=sc.name,
        devices=len(plan.specs),
        days=sc.days,
        seed=sc.seed,
        counts=dict(counts),
        by_kind=messages["by_kind"],
        published=messages["published"],
        elapsed_s=elapsed,
        messages_per_device_day=messages["per_device_day"] or 0.0,
        sites=plan.sites,
        gateways=sc.topic_filters(),
        faulty_firmware=sc.faulty_firmware,
        fleet_uptime_by_day=plan.summary["truth"]["fleet_uptime_by_day"],
    )


def simulate(
    scenario: str | Path | Scenario,
    broker_url: str | None,
    out_dir: Path,
    devices: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    speed: float | None = None,
    progress: Callable[[Progress], None] | None = None,
    client: str = "wire",
) -> SimResult:
    """Plan, write the files, publish: the whole run (``broker_url=None`` only counts)."""
    # bad flags fail before any file is written
    if broker_url is not None:
        parse_broker_url(broker_url)
    if speed is not None and speed <= 0:
        raise ScenarioError(f"--speed {speed}: must be a positive multiple of real time")
    if client not in CLIENTS:
        raise ScenarioError(f"--client {client!r}: use one of {', '.join(CLIENTS)}")
    plan = prepare(scenario, out_dir, devices=devices, days=days, seed=seed)
    return publish_plan(plan, broker_url, speed=speed, progress=progress, client=client)
