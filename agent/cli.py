"""``fleetpulse agent run|status``: the agent's commands; errors become one line on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import AgentConfig, load_config
from .errors import AgentError, ConfigError
from .status import format_text, read_status

log = logging.getLogger(__name__)

# Exit codes: 0 done, 1 runtime failure, 2 bad usage or configuration (a restart won't help).
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("FLEETPULSE_CONFIG") or None,
        metavar="PATH",
        help="agent TOML config (default: $FLEETPULSE_CONFIG; FLEETPULSE_* variables "
        "override its keys, e.g. FLEETPULSE_MQTT__PORT=1884)",
    )


def register(subs: Any, name: str, help_text: str) -> None:
    """Add ``agent run`` and ``agent status`` to the top-level parser."""
    p = subs.add_parser(name, help=help_text, description=help_text)
    commands = p.add_subparsers(dest="agent_command", metavar="COMMAND")
    p.set_defaults(handler=lambda args: _no_command(p))

    run = commands.add_parser(
        "run",
        help="run the agent in the foreground (logs to stderr; SIGTERM stops it cleanly)",
        description="Ingest MQTT telemetry into the SQLite buffer until SIGTERM/SIGINT. "
        "Each message is acknowledged to the broker only after its row is committed.",
    )
    _add_config(run)
    run.set_defaults(handler=cmd_run)

    status = commands.add_parser(
        "status",
        help="show what the buffer holds (works while the agent runs)",
        description="Read the agent's SQLite buffer through a read-only connection and show "
        "readings, quarantine, pending upload and observation figures.",
    )
    _add_config(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=cmd_status)


def _no_command(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return EXIT_CONFIG


def _fail(command: str, exc: AgentError) -> int:
    print(f"fleetpulse agent {command}: {exc}", file=sys.stderr)
    return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE


def _load(args: argparse.Namespace) -> AgentConfig:
    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    """``agent run``: the service in the foreground until a signal."""
    from .service import Service  # paho is needed only here

    try:
        cfg = _load(args)
        if not getattr(args, "verbose", False):
            logging.getLogger().setLevel(cfg.log_level.upper())
        service = Service(cfg)
        service.install_signal_handlers()
        service.run()
    except AgentError as exc:
        return _fail("run", exc)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``agent status``: figures from the buffer, as text or JSON."""
    try:
        cfg = _load(args)
        status = read_status(cfg.db_path)
    except AgentError as exc:
        return _fail("status", exc)
    status = {"gateway_id": cfg.gateway_id, **status}
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_text(status))
    return 0
