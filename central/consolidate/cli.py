"""``fleetpulse central consolidate`` and ``fleetpulse central runs``.

Both are registered through ``central.cli.REGISTRARS``; errors reach the user as one line
on stderr through ``central.cli.guarded`` (exit 1, 2 for config errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import StateError

# central.cli imports this module to register the commands: its helpers are imported
# when a command is registered or run, once central.cli is complete.
ENGINES = ("duckdb", "spark")


def _consolidate(args: argparse.Namespace) -> int:
    from central.cli import load

    from .progress import Progress
    from .runner import consolidate

    config = load(args)  # validated before any I/O
    progress = None
    if args.progress != "never":
        progress = Progress(tty=True if args.progress == "always" else None)
        if args.progress == "auto" and not progress.tty:
            progress = None  # timers and pipes get the log lines, not a bar
    outcome = consolidate(config, engine_name=args.engine, full=args.full, progress=progress)
    print(f"{outcome.run_id}: {outcome.message}")
    for p in outcome.published:
        print(f"  {p.table}: {p.rows} rows, Delta version {p.version}")
    return 0


def register_consolidate(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from central.cli import add_config_arg, guarded

    p = subs.add_parser(
        "consolidate",
        help="merge landed batches with registry, firmware and alerts; publish gold Delta tables",
        description="Consolidate the batches landed since the last run (all with --full), "
        "run the validation gates and publish the gold tables under <data_dir>/gold.",
    )
    add_config_arg(p)
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="query engine (default: [consolidate] engine, duckdb)",
    )
    p.add_argument(
        "--full", action="store_true", help="recompute every day from all landed batches"
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: only on a terminal)",
    )
    p.set_defaults(handler=guarded(_consolidate))


def _runs(args: argparse.Namespace) -> int:
    from central.cli import load

    from .runs import read_records, summaries

    config = load(args)
    data_dir = Path(config.data_dir)
    if args.run_id:
        for r in read_records(data_dir):
            if r.get("run_id") == args.run_id:
                r.pop("_path", None)
                print(json.dumps(r, indent=2, default=str))
                return 0
        raise StateError(
            f"no run {args.run_id!r} in {data_dir / 'runs'}: list them with fleetpulse central runs"
        )
    rows = summaries(data_dir)
    if args.limit:
        rows = rows[-args.limit :]
    if args.json:
        print(json.dumps([{**r.__dict__, "path": str(r.path)} for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no consolidation runs yet in {data_dir / 'runs'}", file=sys.stderr)
        return 0
    print(
        f"{'RUN_ID':<44} {'STATUS':<12} {'ENGINE':<7} {'MODE':<12} {'NEW':>5} {'DAYS':>5} "
        f"{'SECONDS':>8}  MESSAGE"
    )
    for s in rows:
        secs = "-" if s.duration_s is None else f"{s.duration_s:.1f}"
        print(
            f"{s.run_id:<44} {s.status:<12} {s.engine:<7} {s.mode:<12} {s.new_batches:>5} "
            f"{s.days:>5} {secs:>8}  {s.message[:100]}"
        )
    return 0


def register_runs(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from central.cli import add_config_arg, guarded

    p = subs.add_parser(
        "runs",
        help="list consolidation runs (lineage records under <data_dir>/runs)",
        description="List consolidation runs, or print one run record as JSON.",
    )
    add_config_arg(p)
    p.add_argument("run_id", nargs="?", help="print this run's full record (JSON)")
    p.add_argument("--limit", type=int, default=0, help="only the last N runs")
    p.add_argument("--json", action="store_true", help="the list as JSON")
    p.set_defaults(handler=guarded(_runs))
