"""``fleetpulse sim``: a virtual fleet against a broker; progress on stderr, summary on stdout."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ScenarioError, SimError
from .publish import CLIENTS
from .run import Progress, simulate
from .scenario import DEFAULT_SCENARIO, builtin_names

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
DEFAULT_OUT = "out/sim"


def register(subs: Any, name: str, help_text: str) -> None:
    """Add ``fleetpulse sim`` to the top-level parser."""
    p = subs.add_parser(
        name,
        help=help_text,
        description=(
            "Publish a virtual fleet's telemetry, status and events over MQTT (DESIGN §3) and "
            "write registry.csv, firmware_versions.avro, alerts.avro and the ground truth "
            "(truth/device_day.parquet, truth/scenario.json) into --out."
        ),
    )
    p.add_argument(
        "--broker", default=DEFAULT_BROKER, help=f"mqtt://HOST:PORT (default {DEFAULT_BROKER})"
    )
    p.add_argument(
        "--scenario",
        default=DEFAULT_SCENARIO,
        metavar="NAME|PATH",
        help=f"built-in ({', '.join(builtin_names())}) or a TOML file (default {DEFAULT_SCENARIO})",
    )
    p.add_argument("--devices", type=_positive_int, help="fleet size (default: the scenario's)")
    p.add_argument(
        "--days", type=_positive_int, help="simulated UTC days (default: the scenario's)"
    )
    p.add_argument(
        "--seed", type=int, help="random seed; same seed, same run (default: the scenario's)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_OUT),
        metavar="DIR",
        help=f"output folder (default {DEFAULT_OUT})",
    )
    p.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help="publish at X times real time (default: as fast as the broker takes it)",
    )
    p.add_argument(
        "--client",
        choices=CLIENTS,
        default="wire",
        help="MQTT client: wire (pipelined, default) or paho (paho-mqtt, ~4x slower)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write the files and count the messages without publishing (no broker needed)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _progress_printer(quiet: bool) -> Any:
    if quiet:
        return None
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(p: Progress) -> None:
        now = time.monotonic()
        final = p.final
        if not tty and now - last[0] < 5 and not final:
            return
        last[0] = now
        pct = min(100.0, 100 * p.published / p.estimated) if p.estimated else 100.0
        rate = p.published / p.elapsed_s if p.elapsed_s > 0 else 0.0
        when = datetime.fromtimestamp(p.sim_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
        line = (
            f"sim: {p.published:,} of ~{p.estimated:,} messages ({pct:3.0f}%), "
            f"simulated {when} UTC, {rate:,.0f} msg/s"
        )
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    """Handler of ``fleetpulse sim``."""
    show = _progress_printer(args.quiet)
    try:
        result = simulate(
            args.scenario,
            None if args.dry_run else args.broker,
            args.out,
            devices=args.devices,
            days=args.days,
            seed=args.seed,
            speed=args.speed,
            progress=show,
            client=args.client,
        )
    except ScenarioError as exc:
        print(
            f"\nfleetpulse sim: {exc}"
            if show and sys.stderr.isatty()
            else f"fleetpulse sim: {exc}",
            file=sys.stderr,
        )
        return 2
    except SimError as exc:
        print(f"fleetpulse sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfleetpulse sim: interrupted", file=sys.stderr)
        return 130
    if show is not None and sys.stderr.isatty():
        print(file=sys.stderr)
    k = result.by_kind
    c = result.counts
    verb = "counted (dry run)" if args.dry_run else "published"
    rate = "" if args.dry_run else f" ({result.rate:,.0f} msg/s)"
    uptimes = "  ".join(
        f"{day} {100 * u:.1f}%" for day, u in result.fleet_uptime_by_day.items() if u is not None
    )
    print(
        f"{result.scenario}: {result.devices} devices x {result.days} days, seed {result.seed} "
        f"-> {result.out_dir}"
    )
    print(
        f"{verb} {result.published:,} messages in {result.elapsed_s:.1f} s{rate}; "
        f"{result.messages_per_device_day:,.0f} per device-day"
    )
    print(
        f"  telemetry {k.get('telemetry', 0):,}  status {k.get('status', 0):,} "
        f"(LWT {c.get('status.lwt', 0):,})  event {k.get('event', 0):,}  "
        f"malformed {k.get('malformed', 0):,}  duplicates "
        f"{sum(n for lbl, n in c.items() if lbl.startswith('duplicate.')):,}  "
        f"dropped on lossy links {c.get('dropped.telemetry', 0):,}"
    )
    print(f"truth: fleet uptime {uptimes}; faulty firmware {result.faulty_firmware}")
    for gw, filters in result.gateways.items():
        print(f"  gateway {gw}: {' '.join(filters)}")
    return 0
