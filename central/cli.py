"""``fleetpulse central …`` commands: ``serve`` and ``token create|revoke|list``.

To add commands (e.g. ``consolidate``), write ``def register_x(subs) -> None`` that adds
parsers with ``set_defaults(handler=fn)`` and append it to ``REGISTRARS``; handlers get the
parsed args, return an exit code, and may raise ``CentralError`` (turned into one stderr
line and exit 1 here). ``load(args)`` gives the validated config of ``--config``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CentralConfig, load_config
from .consolidate.cli import register_consolidate, register_runs
from .errors import CentralError, ConfigError
from .report.cli import register_report

if TYPE_CHECKING:
    from .ledger import Ledger

Handler = Callable[[argparse.Namespace], int]


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` (default: $FLEETPULSE_CONFIG, else built-in defaults)."""
    default = os.environ.get("FLEETPULSE_CONFIG")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(default) if default else None,
        metavar="PATH",
        help="central TOML config (default: $FLEETPULSE_CONFIG, else built-in defaults)",
    )


def load(args: argparse.Namespace) -> CentralConfig:
    return load_config(args.config)


def guarded(fn: Handler) -> Handler:
    """Run ``fn``; a ``CentralError`` becomes one line on stderr and exit 1 (2 for config)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ConfigError as exc:
            print(f"fleetpulse central: config error: {exc}", file=sys.stderr)
            return 2
        except CentralError as exc:
            print(f"fleetpulse central: {exc}", file=sys.stderr)
            return 1

    return run


# -- serve -------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    from .server import serve  # uvicorn only when serving

    serve(load(args))
    return 0


def register_serve(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("serve", help="run the ingest API (PUT /v1/batches/{batch_id})")
    add_config_arg(p)
    p.set_defaults(handler=guarded(_serve))


# -- token ---------------------------------------------------------------------------------------
def _ledger(args: argparse.Namespace) -> Ledger:
    from .ledger import open_ledger

    return open_ledger(load(args).ledger_dsn)


def _token_create(args: argparse.Namespace) -> int:
    from .tokens import check_gateway_id, create_token

    check_gateway_id(args.gateway_id)  # before any I/O
    ledger = _ledger(args)
    try:
        token, record = create_token(ledger, args.gateway_id, int(time.time() * 1000))
    finally:
        ledger.close()
    print(f"created token {record.token_id} for gateway {record.gateway_id}", file=sys.stderr)
    print("store it in the agent config (upload token); it is not shown again", file=sys.stderr)
    print(token)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from .tokens import check_gateway_id, revoke_tokens

    check_gateway_id(args.gateway_id)
    ledger = _ledger(args)
    try:
        n = revoke_tokens(ledger, args.gateway_id, int(time.time() * 1000), args.token_id)
    finally:
        ledger.close()
    print(f"revoked {n} token(s) of gateway {args.gateway_id}")
    return 0


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _token_list(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    try:
        records = ledger.tokens()
    finally:
        ledger.close()
    print(f"{'GATEWAY':<24} {'TOKEN_ID':<16} {'CREATED':<20} REVOKED")
    for r in records:
        print(
            f"{r.gateway_id:<24} {r.token_id:<16} {_fmt_ms(r.created_at_ms):<20} "
            f"{_fmt_ms(r.revoked_at_ms)}"
        )
    return 0


def register_token(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subs.add_parser("token", help="gateway upload tokens: create, revoke, list")
    tsubs = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    c = tsubs.add_parser("create", help="new token for a gateway; printed as the last line")
    c.add_argument("gateway_id", metavar="GATEWAY_ID")
    add_config_arg(c)
    c.set_defaults(handler=guarded(_token_create))
    r = tsubs.add_parser("revoke", help="revoke a gateway's active tokens")
    r.add_argument("gateway_id", metavar="GATEWAY_ID")
    r.add_argument("--token-id", help="revoke only this token (see token list)")
    add_config_arg(r)
    r.set_defaults(handler=guarded(_token_revoke))
    ls = tsubs.add_parser("list", help="tokens with gateway, id, creation and revocation time")
    add_config_arg(ls)
    ls.set_defaults(handler=guarded(_token_list))


# Each entry adds its subcommands to ``fleetpulse central``; append yours.
REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    register_serve,
    register_token,
    register_consolidate,
    register_runs,
    register_report,
]


def register(
    subs: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> None:
    """Called by ``fleetpulse.cli``: adds ``fleetpulse central …``."""
    parser = subs.add_parser(name, help=help_text, description=help_text)
    central_subs = parser.add_subparsers(dest="central_command", metavar="COMMAND")
    for registrar in REGISTRARS:
        registrar(central_subs)
