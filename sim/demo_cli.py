"""``fleetpulse demo``: the whole pipeline on a simulated fleet in one command (thin CLI).

The work is in ``sim/demo.py``; this module parses flags, prints progress and the summary,
and turns a failed stage into one line on stderr and exit code 1 (130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .demo import DEFAULT_DAYS, DEFAULT_DEVICES, DEFAULT_SEED, Event, Options, as_dict, run_demo
from .demo_procs import StageFailed
from .errors import SimError

# Without a terminal, a moving stage prints a line at most this often.
PLAIN_UPDATE_EVERY_S = 5.0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def register(subs: Any, name: str, help_text: str) -> None:
    """Add ``fleetpulse demo`` to the top-level parser."""
    p = subs.add_parser(
        name,
        help=help_text,
        description="Run the whole pipeline on a simulated fleet: a private Mosquitto, the "
        "central ingest API, three agents (one per gateway), the simulator's "
        "firmware-regression scenario, upload, consolidation, DIR/report.html, and a summary "
        "checked against the simulator's ground truth. Everything it starts is stopped when "
        "it ends (also on Ctrl-C).",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        metavar="DIR",
        help="output folder; its broker/, sim/, central/, agents/ and report.html are "
        "recreated on each run (default: demo-out)",
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="use this MQTT broker (mqtt://[USER[:PASS]@]HOST[:PORT]) instead of a private "
        "Mosquitto; it must queue enough messages per session (docs/demo.md)",
    )
    p.add_argument(
        "--devices",
        type=_positive,
        metavar="N",
        help=f"fleet size (default {DEFAULT_DEVICES}; fewer with the amqtt fallback)",
    )
    p.add_argument(
        "--days", type=_positive, default=DEFAULT_DAYS, metavar="D", help="simulated days"
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S", help="random seed")
    p.set_defaults(handler=cmd_demo)


class Printer:
    """Stage lines with timings on stdout; a live line on a terminal, sparse lines otherwise."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self.last_plain = 0.0
        self.live = False

    def _clear(self) -> None:
        if self.live:
            self.out.write("\r\x1b[K")
            self.live = False

    def __call__(self, ev: Event) -> None:
        at = f"[{time.monotonic() - self.t0:6.1f} s]"
        if ev.kind == "update":
            if self.tty:
                self._clear()
                self.out.write(f"{at} {ev.stage:<11} {ev.text}")
                self.live = True
                self.out.flush()
            elif time.monotonic() - self.last_plain >= PLAIN_UPDATE_EVERY_S:
                self.last_plain = time.monotonic()
                print(f"{at} {ev.stage:<11} {ev.text}", file=self.out, flush=True)
            return
        self._clear()
        if ev.kind == "start":
            print(f"{at} {ev.stage:<11} ...", file=self.out, flush=True)
        elif ev.kind == "done":
            print(f"{at} {ev.stage:<11} done in {ev.seconds:.1f} s", file=self.out, flush=True)
        else:
            print(f"{at} {ev.stage:<11} {ev.text}", file=self.out, flush=True)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the Ctrl-C path: the stack unwinds and every child is stopped.
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    opts = Options(
        out=args.out,
        broker_url=args.broker,
        devices=args.devices,
        days=args.days,
        seed=args.seed,
    )
    if not getattr(args, "verbose", False):
        # progress lines say what happens; INFO logs (every health poll) would drown them
        logging.getLogger().setLevel(logging.WARNING)
    printer = Printer(sys.stdout)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = run_demo(opts, printer)
    except StageFailed as exc:
        printer._clear()
        print(f"fleetpulse demo: stage {exc}", file=sys.stderr)
        return 1
    except SimError as exc:
        print(f"fleetpulse demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        printer._clear()
        print("fleetpulse demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    (result.out / "demo.json").write_text(json.dumps(as_dict(result), indent=2) + "\n")
    print()
    for line in result.summary:
        print(line)
    print()
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"wall time {result.total_s:.0f} s: {timings}")
    print(f"report: {result.report}")
    print(f"central: {result.out / 'central' / 'central.toml'} (gold at central/gold/)")
    ok = result.accuracy is not None and result.accuracy.passed
    if not ok:
        print("fleetpulse demo: stage check: accuracy outside the bars (above)", file=sys.stderr)
        return 1
    return 0
