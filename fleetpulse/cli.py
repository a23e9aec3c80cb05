"""Top-level CLI: ``fleetpulse agent|central|sim|demo …``; each side registers its own commands.

Sub-packages are imported lazily so that the agent runs with the ``agent`` extra alone.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from . import __version__

# (command, module that defines ``register(subparsers)``, help)
_SIDES: tuple[tuple[str, str, str], ...] = (
    ("agent", "agent.cli", "the gateway agent: MQTT ingest, buffer, local DAG, upload"),
    ("central", "central.cli", "the central ingest API, consolidation and report"),
    ("sim", "sim.cli", "the virtual fleet (MQTT test harness)"),
    ("demo", "sim.demo_cli", "the whole pipeline end to end on embedded defaults"),
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetpulse",
        description="IoT fleet-uptime pipeline: agents on gateways, consolidation centrally.",
    )
    parser.add_argument("--version", action="version", version=f"fleetpulse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module, help_text in _SIDES:
        # Only import the side that is asked for: central needs extras the Pi lacks.
        if wanted is not None and wanted != name:
            subs.add_parser(name, help=help_text)
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            p = subs.add_parser(name, help=f"{help_text} (unavailable: {exc.name} missing)")
            p.set_defaults(_missing=(name, exc))
            continue
        mod.register(subs, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    missing = getattr(args, "_missing", None)
    if missing is not None:
        name, exc = missing
        print(
            f"fleetpulse {name}: needs the Python package {exc.name!r}; "
            f"install it with: pip install 'fleetpulse[{name if name != 'demo' else 'central'}]'",
            file=sys.stderr,
        )
        return 2
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result
