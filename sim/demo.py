"""``fleetpulse demo`` as functions: broker, central, three agents, the fleet, gold, report.

Each stage is a function; ``run_demo`` calls them in order under one ``ExitStack`` so that
every child process is stopped on success, on error and on Ctrl-C. Progress goes to a
callback (the CLI prints it), so a test or a benchmark can drive the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from .accuracy import Accuracy, describe, measure
from .demo_procs import (
    Child,
    StageFailed,
    amqtt_available,
    die_with_parent,
    fleetpulse_argv,
    free_port,
    mosquitto_binary,
    port_open,
    start_amqtt,
    start_child,
    start_mosquitto,
    wait_until,
)
from .errors import SimError
from .messages import estimated_messages
from .publish import parse_broker_url
from .run import Plan, Progress, SimResult, prepare, publish_plan

log = logging.getLogger(__name__)

SCENARIO = "firmware-regression"
# Sized so the whole demo stays under 3 minutes on 2 shared cores (docs/demo.md, measured).
DEFAULT_DEVICES = 60
DEFAULT_DAYS = 4
DEFAULT_SEED = 42
# amqtt is a pure-Python broker, several times slower than Mosquitto.
AMQTT_DEVICES = 12
# Draining: how long the agents may make no progress before the stage fails.
DRAIN_STALL_S = 60.0
DRAIN_POLL_S = 0.25
STAGES = (
    "broker",
    "plan",
    "central",
    "agents",
    "publish",
    "drain",
    "flush",
    "consolidate",
    "report",
    "check",
    "stop",
)


@dataclass(frozen=True)
class Options:
    """What to run: where, how big, which broker."""

    out: Path
    broker_url: str | None = None
    devices: int | None = None
    days: int = DEFAULT_DAYS
    seed: int = DEFAULT_SEED
    scenario: str = SCENARIO


@dataclass(frozen=True)
class Event:
    """A progress event: a stage starts (``start``), moves (``update``), ends (``done``),
    or a remark (``note``)."""

    kind: str
    stage: str
    text: str = ""
    seconds: float | None = None


Callback = Callable[[Event], None]


@dataclass
class Agent:
    """One gateway's agent: its config, buffer and process."""

    gateway: str
    topics: list[str]
    config: Path
    db: Path
    child: Child | None = None


@dataclass
class DemoResult:
    """What the demo did and found."""

    out: Path
    broker: str
    timings: dict[str, float] = field(default_factory=dict)
    sim: SimResult | None = None
    ingested: dict[str, int] = field(default_factory=dict)
    accuracy: Accuracy | None = None
    summary: list[str] = field(default_factory=list)
    report: Path | None = None

    @property
    def total_s(self) -> float:
        return sum(self.timings.values())


class _Stages:
    """Times each stage and turns any failure inside it into ``StageFailed(stage)``."""

    def __init__(self, result: DemoResult, emit: Callback) -> None:
        self.result = result
        self.emit = emit

    @contextlib.contextmanager
    def __call__(self, name: str, text: str = "") -> Iterator[None]:
        self.emit(Event("start", name, text))
        t0 = time.monotonic()
        try:
            yield
        except StageFailed:
            raise
        except SimError as exc:
            raise StageFailed(name, str(exc)) from exc
        except OSError as exc:
            raise StageFailed(name, f"{exc.strerror or exc} ({exc.filename or ''})") from exc
        finally:
            self.result.timings[name] = time.monotonic() - t0
        self.emit(Event("done", name, seconds=self.result.timings[name]))


def child_env() -> dict[str, str]:
    """The environment for children: without FLEETPULSE_* (they would override the demo's
    configs, e.g. an exported FLEETPULSE_MQTT__PORT would point agents at another broker)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}


def _toml_str(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def central_toml(data_dir: Path, port: int, sim_dir: Path) -> str:
    """``DIR/central/central.toml``: loopback API, gold under data_dir, the sim's sources."""
    return (
        f"data_dir = {_toml_str(data_dir)}\n"
        f'listen = "127.0.0.1:{port}"\n'
        "\n[sources]\n"
        f"registry = {_toml_str(sim_dir / 'registry.csv')}\n"
        f"firmware = {_toml_str(sim_dir / 'firmware_versions.avro')}\n"
        f"alerts = {_toml_str(sim_dir / 'alerts.avro')}\n"
    )


def agent_toml(
    gateway: str,
    data_dir: Path,
    host: str,
    port: int,
    topics: list[str],
    *,
    username: str | None = None,
    password_file: Path | None = None,
    central_url: str | None = None,
    token_file: Path | None = None,
    registry: Path | None = None,
    metrics_port: int | None = None,
    protocol: str = "mqttv5",
) -> str:
    """One agent's config: its gateway's topic filters, the demo's broker and central."""
    lines = [
        f"gateway_id = {_toml_str(gateway)}",
        f"data_dir = {_toml_str(data_dir)}",
        # three agents on one host cannot share the default metrics port
        *([f'metrics_listen = "127.0.0.1:{metrics_port}"'] if metrics_port else []),
        "",
        "[mqtt]",
        f"host = {_toml_str(host)}",
        f"port = {port}",
        f'protocol = "{protocol}"',
        "topics = [" + ", ".join(_toml_str(t) for t in topics) + "]",
        # a fresh demo must not resume a session another run left on an external broker
        f"client_id = {_toml_str(f'fleetpulse-demo-{gateway}-{os.getpid()}')}",
    ]
    if username is not None:
        lines.append(f"username = {_toml_str(username)}")
    if password_file is not None:
        lines.append(f"password_file = {_toml_str(password_file)}")
    if central_url is not None:
        lines += ["", "[central]", f"url = {_toml_str(central_url)}"]
        if token_file is not None:
            lines.append(f"token_file = {_toml_str(token_file)}")
    if registry is not None:
        lines += ["", "[registry]", f"path = {_toml_str(registry)}"]
    return "\n".join(lines) + "\n"


def _run_cli(stage: str, args: list[str], log_path: Path, timeout: float) -> str:
    """Run ``fleetpulse ARGS`` to completion; its stdout, or ``StageFailed`` with its error."""
    try:
        done = subprocess.run(
            fleetpulse_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired as exc:
        raise StageFailed(
            stage, f"`fleetpulse {' '.join(args)}` took over {timeout:.0f} s"
        ) from exc
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(f"$ fleetpulse {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise StageFailed(
            stage, f"`fleetpulse {args[0]} {args[1]}` exited {done.returncode}: {last}"
        )
    return done.stdout


# -- stages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerChoice:
    """The broker the demo uses: URL, a fleet-size cap (None: none), the agents' protocol."""

    url: str
    cap: int | None = None
    protocol: str = "mqttv5"


def start_broker(
    opts: Options, work: Path, stack: contextlib.ExitStack, emit: Callback
) -> BrokerChoice:
    """An external broker (checked to answer), a private Mosquitto, or amqtt."""
    if opts.broker_url is not None:
        addr = parse_broker_url(opts.broker_url)
        if not port_open(addr.port, addr.host):
            raise StageFailed(
                "broker",
                f"nothing answers at {addr.url}: start that broker, or leave out --broker "
                "to use a private Mosquitto",
            )
        emit(Event("note", "broker", f"using the external broker {addr.url}"))
        return BrokerChoice(opts.broker_url)
    if mosquitto_binary() is not None:
        child, port = start_mosquitto(work / "broker", "broker")
        stack.callback(child.stop)
        emit(Event("note", "broker", f"private Mosquitto on 127.0.0.1:{port}"))
        return BrokerChoice(f"mqtt://127.0.0.1:{port}")
    if amqtt_available():
        child, port = start_amqtt(work / "broker", "broker")
        stack.callback(child.stop)
        emit(
            Event(
                "note",
                "broker",
                f"mosquitto is not installed: using the pure-Python amqtt broker on "
                f"127.0.0.1:{port} with a smaller fleet (at most {AMQTT_DEVICES} devices); "
                "amqtt keeps no offline sessions",
            )
        )
        # amqtt speaks MQTT 3.1.1 only
        return BrokerChoice(f"mqtt://127.0.0.1:{port}", AMQTT_DEVICES, "mqttv311")
    raise StageFailed(
        "broker",
        "no MQTT broker: install Mosquitto (apt-get install mosquitto) or amqtt "
        "(pip install amqtt), or pass --broker mqtt://HOST:PORT",
    )


def start_central(
    work: Path, sim_dir: Path, gateways: list[str], stack: contextlib.ExitStack
) -> tuple[str, dict[str, Path]]:
    """Fresh central config, a token per gateway, ``central serve``; its URL and token files."""
    central_dir = work / "central"
    central_dir.mkdir(parents=True)
    port = free_port()
    cfg = central_dir / "central.toml"
    cfg.write_text(central_toml(central_dir, port, sim_dir))
    tokens: dict[str, Path] = {}
    for gw in gateways:
        out = _run_cli(
            "central",
            ["central", "token", "create", gw, "--config", str(cfg)],
            central_dir / "tokens.log",
            60,
        )
        token_file = work / "agents" / gw / "central-token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(out.strip().splitlines()[-1] + "\n")
        token_file.chmod(0o600)
        tokens[gw] = token_file
    child = start_child(
        "central",
        fleetpulse_argv("central", "serve", "--config", str(cfg)),
        central_dir / "central.log",
        env=child_env(),
    )
    stack.callback(child.stop)
    url = f"http://127.0.0.1:{port}"
    wait_until("central", f"central serve at {url}", lambda: _healthy(url) or not child.alive(), 60)
    if not child.alive():
        raise StageFailed(
            "central", f"central serve exited: {child.log_tail(1)} ({child.log_path})"
        )
    return url, tokens


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/v1/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _subscribed(db: Path) -> bool:
    import sqlite3

    if not db.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = conn.execute("SELECT 1 FROM observations WHERE end_ms IS NULL").fetchone()
            return row is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def start_agents(
    work: Path,
    plan: Plan,
    broker: BrokerChoice,
    central_url: str,
    tokens: dict[str, Path],
    stack: contextlib.ExitStack,
) -> list[Agent]:
    """One agent per gateway, subscribed to its sites' topic filters, as subprocesses."""
    addr = parse_broker_url(broker.url)
    agents = []
    for gw, topics in plan.scenario.topic_filters().items():
        home = work / "agents" / gw
        home.mkdir(parents=True, exist_ok=True)
        password_file = None
        if addr.password is not None:
            password_file = home / "mqtt-password"
            password_file.write_text(addr.password + "\n")
            password_file.chmod(0o600)
        cfg = home / "agent.toml"
        cfg.write_text(
            agent_toml(
                gw,
                home / "data",
                addr.host,
                addr.port,
                topics,
                username=addr.username,
                password_file=password_file,
                protocol=broker.protocol,
                central_url=central_url,
                token_file=tokens.get(gw),
                registry=plan.out_dir / "registry.csv",
                metrics_port=free_port(),
            )
        )
        agents.append(Agent(gw, topics, cfg, home / "data" / "agent.sqlite3"))
    for a in agents:
        a.child = start_child(
            f"agent {a.gateway}",
            fleetpulse_argv("agent", "run", "--config", str(a.config)),
            a.config.parent / "agent.log",
            env=child_env(),
        )
        stack.callback(a.child.stop)
    for a in agents:
        child = a.child
        assert child is not None
        wait_until(
            "agents",
            f"agent {a.gateway} to subscribe",
            lambda: _subscribed(a.db) or not child.alive(),  # noqa: B023 - called at once
            60,
        )
        if not child.alive():
            raise StageFailed(
                "agents", f"agent {a.gateway} exited: {child.log_tail(1)} (see {child.log_path})"
            )
    return agents


def ingested(agents: list[Agent]) -> dict[str, int]:
    """Per gateway: messages the agent has committed (readings + quarantined)."""
    from agent.status import read_status

    out = {}
    for a in agents:
        s = read_status(a.db)
        out[a.gateway] = int(s["readings_total"]) + int(s["quarantined_total"])
    return out


def wait_drained(
    agents: list[Agent], expected: int, emit: Callback, stall_s: float = DRAIN_STALL_S
) -> dict[str, int]:
    """Until the agents hold ``expected`` messages; fails when they stop making progress.

    ``expected`` is what was published minus the simulator's deliberate duplicates (stored
    once by design); each message reaches exactly one agent (one gateway per site).
    """
    last_total, last_move = -1, time.monotonic()
    while True:
        counts = ingested(agents)
        total = sum(counts.values())
        now = time.monotonic()
        if total != last_total:
            last_total, last_move = total, now
            emit(
                Event(
                    "update",
                    "drain",
                    f"{total:,}/{expected:,} "
                    + " ".join(f"{gw} {n:,}" for gw, n in counts.items()),
                )
            )
        if total >= expected:
            return counts
        for a in agents:
            if a.child is not None and not a.child.alive():
                raise StageFailed(
                    "drain", f"agent {a.gateway} exited: {a.child.log_tail(1)} ({a.child.log_path})"
                )
        if now - last_move > stall_s:
            raise StageFailed(
                "drain",
                f"the agents hold {total:,} of {expected:,} messages and made no progress "
                f"for {stall_s:.0f} s; see the agent logs under agents/ and the broker log",
            )
        time.sleep(DRAIN_POLL_S)


def flush_agents(agents: list[Agent], timeout: float = 300) -> None:
    """``fleetpulse agent flush`` for each agent: local DAG, export, upload now."""
    for a in agents:
        _run_cli(
            "flush",
            ["agent", "flush", "--config", str(a.config)],
            a.config.parent / "flush.log",
            timeout,
        )


def sim_days(sim_dir: Path) -> tuple[date, date]:
    """The first and last simulated UTC day (truth/scenario.json)."""
    scenario = json.loads((sim_dir / "truth" / "scenario.json").read_text(encoding="utf-8"))
    start = datetime.fromisoformat(scenario["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(scenario["end"].replace("Z", "+00:00"))
    return start.date(), (end - timedelta(seconds=1)).date()


def summary_lines(gold_dir: Path, sim_dir: Path) -> list[str]:
    """Fleet uptime per day (with truth), the worst firmware and sites, where to look next."""
    from central.report import load_gold, summarize
    from central.report.summary import pct

    first, last = sim_days(sim_dir)
    s = summarize(load_gold(gold_dir, since=first, until=last))
    scenario = json.loads((sim_dir / "truth" / "scenario.json").read_text(encoding="utf-8"))
    truth = scenario["truth"]["fleet_uptime_by_day"]
    lines = ["fleet uptime per day (pipeline | simulator's truth):"]
    for d in s.days:
        lines.append(f"  {d.day}  {pct(d.uptime, 2):>7} | {pct(truth.get(str(d.day)), 2):>7}")
    v = s.firmware_verdict
    if v is not None:
        rest = f" against {pct(v.rest.uptime, 2)} on all other versions" if v.rest else ""
        lines.append(
            f"worst firmware: {v.worst.key} at {pct(v.worst.uptime, 2)}{rest}; "
            f"{pct(v.time_share, 0)} of device-time, {pct(v.down_share, 0)} of all downtime"
        )
    if s.worst_sites:
        lines.append(
            "worst sites: "
            + ", ".join(f"{sv.site.key} {pct(sv.site.uptime, 2)}" for sv in s.worst_sites)
        )
    if s.next_steps:
        lines.append("where to look next:")
        lines += [f"  - {step}" for step in s.next_steps[:4]]
    return lines


# -- the whole run -----------------------------------------------------------------------------


def run_demo(opts: Options, emit: Callback) -> DemoResult:
    """Run every stage; children are stopped however it ends. Raises ``StageFailed``."""
    work = opts.out.resolve()
    for sub in ("broker", "sim", "central", "agents"):
        if (work / sub).exists():
            shutil.rmtree(work / sub)  # a fresh run each time; the folder itself may hold more
    (work / "report.html").unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    result = DemoResult(work, broker="")
    stage = _Stages(result, emit)
    sim_dir = work / "sim"
    stack = contextlib.ExitStack()
    try:
        with stage("broker"):
            broker = start_broker(opts, work, stack, emit)
            result.broker = broker.url
        devices = opts.devices or DEFAULT_DEVICES
        if broker.cap is not None:
            devices = min(devices, broker.cap)
        with stage("plan"):
            plan = prepare(
                opts.scenario,
                sim_dir,
                devices=devices,
                days=opts.days,
                seed=opts.seed,
            )
            est = estimated_messages(plan.specs, plan.scenario)
            emit(
                Event(
                    "note",
                    "plan",
                    f"{len(plan.specs)} devices x {plan.scenario.days} days of "
                    f"{plan.scenario.name} (seed {plan.scenario.seed}), ~{est:,.0f} messages",
                )
            )
        with stage("central"):
            central_url, tokens = start_central(
                work, sim_dir, list(plan.scenario.topic_filters()), stack
            )
            emit(Event("note", "central", f"ingest API at {central_url}"))
        with stage("agents"):
            agents = start_agents(work, plan, broker, central_url, tokens, stack)
            emit(
                Event(
                    "note",
                    "agents",
                    "; ".join(f"{a.gateway}: {' '.join(a.topics)}" for a in agents),
                )
            )
        with stage("publish"):

            def on_progress(p: Progress) -> None:
                emit(
                    Event(
                        "update",
                        "publish",
                        f"{p.published:,}/~{p.estimated:,} messages "
                        f"({p.published / p.elapsed_s if p.elapsed_s else 0:,.0f}/s)",
                    )
                )

            result.sim = publish_plan(plan, result.broker, progress=on_progress)
        with stage("drain"):
            dups = sum(v for k, v in result.sim.counts.items() if k.startswith("duplicate."))
            result.ingested = wait_drained(agents, result.sim.published - dups, emit)
        with stage("flush"):
            flush_agents(agents)
        cfg = work / "central" / "central.toml"
        with stage("consolidate"):
            _run_cli(
                "consolidate",
                ["central", "consolidate", "--config", str(cfg), "--progress", "never"],
                work / "central" / "consolidate.log",
                600,
            )
        with stage("report"):
            report = work / "report.html"
            # the simulated days only: gold also holds the real days the agents were
            # listening, when the (simulated) fleet was silent (docs/demo.md)
            first, last = sim_days(sim_dir)
            _run_cli(
                "report",
                [
                    "central",
                    "report",
                    "--config",
                    str(cfg),
                    "--out",
                    str(report),
                    "--since",
                    first.isoformat(),
                    "--until",
                    last.isoformat(),
                ],
                work / "central" / "report.log",
                300,
            )
            result.report = report
        with stage("check"):
            gold = work / "central" / "gold"
            result.accuracy = measure(gold, sim_dir)
            result.summary = summary_lines(gold, sim_dir) + describe(result.accuracy)
    finally:
        t0 = time.monotonic()
        emit(Event("start", "stop"))
        stack.close()
        result.timings["stop"] = time.monotonic() - t0
        emit(Event("done", "stop", seconds=result.timings["stop"]))
    return result


def as_dict(result: DemoResult) -> dict[str, Any]:
    """The run's figures as JSON-ready data (``DIR/demo.json``, the benchmark)."""
    a = result.accuracy
    return {
        "broker": result.broker,
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "total_s": round(result.total_s, 2),
        "devices": result.sim.devices if result.sim else None,
        "days": result.sim.days if result.sim else None,
        "published": result.sim.published if result.sim else None,
        "ingested": result.ingested,
        "accuracy": None
        if a is None
        else {
            "device_day_mae_pts": a.device_day_mae_pts,
            "device_day_max_pts": a.device_day_max_pts,
            "fleet_day_error_pts": {str(d): e for d, e in a.fleet_day_error_pts.items()},
            "fleet_day_max_pts": a.fleet_day_max_pts,
            "faulty_firmware": a.faulty_firmware,
            "lowest_firmware": a.lowest_firmware,
            "missing_device_days": len(a.missing),
            "passed": a.passed,
        },
        "report": str(result.report) if result.report else None,
    }
