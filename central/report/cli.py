"""``fleetpulse central report --config PATH --out FILE.html``: the HTML report on gold."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day: use YYYY-MM-DD") from None


def _report(args: argparse.Namespace) -> int:
    from central.cli import load

    from .build import build_report, write_report
    from .data import gold_dir_of, runs_dir_of

    if args.since and args.until and args.since > args.until:
        print(
            f"fleetpulse central report: --since {args.since} is after --until {args.until}",
            file=sys.stderr,
        )
        return 2
    config = load(args)  # validated before any file is read
    text = build_report(
        args.gold or gold_dir_of(config.data_dir),
        args.runs or runs_dir_of(config.data_dir),
        since=args.since,
        until=args.until,
        default_target=config.consolidate.uptime_target,
    )
    write_report(args.out, text)
    print(f"wrote {args.out} ({len(text.encode()) / 1024:,.0f} KiB)")
    return 0


def register_report(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``fleetpulse central report``."""
    from central.cli import add_config_arg, guarded

    p = subs.add_parser(
        "report",
        help="write one self-contained HTML report (plots, why, lineage) from the gold tables",
        description="Write one self-contained HTML file (inline SVG plots, no external "
        "resources) from the gold Delta tables under <data_dir>/gold and the newest run "
        "record under <data_dir>/runs.",
    )
    add_config_arg(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="report file")
    p.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="first day (default: all)")
    p.add_argument("--until", type=_day, metavar="YYYY-MM-DD", help="last day (default: all)")
    p.add_argument(
        "--gold", type=Path, metavar="DIR", help="gold tables folder (default: <data_dir>/gold)"
    )
    p.add_argument(
        "--runs", type=Path, metavar="DIR", help="run records folder (default: <data_dir>/runs)"
    )
    p.set_defaults(handler=guarded(_report))
