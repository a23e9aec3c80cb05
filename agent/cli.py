"""``fleetpulse agent run|status|flush|kpis|batches|requeue``: the agent's commands; errors: one
line on stderr."""

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
    """Add ``agent run``, ``status``, ``flush``, ``kpis``, ``batches`` and ``requeue``."""
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

    flush = commands.add_parser(
        "flush",
        help="run the DAG, export and upload now (exit 1 with the reason if central "
        "cannot take the batches)",
        description="Run the local KPI DAG, export every new reading and observation "
        "interval to a Parquet batch, and upload every waiting batch now, ignoring the "
        "backoff. Safe while the agent runs. Exit 0 when the outbox is empty afterwards, "
        "1 with the reason when a batch could not be uploaded or was flagged.",
    )
    _add_config(flush)
    flush.add_argument("--json", action="store_true", help="print one JSON object")
    flush.set_defaults(handler=cmd_flush)

    kpis = commands.add_parser(
        "kpis",
        help="show the local per-device, per-day uptime view",
        description="Show the KPI rows the local DAG computed (DESIGN §4): up/down/unknown "
        "seconds, device_uptime and connectivity_ratio per device and UTC day.",
    )
    _add_config(kpis)
    kpis.add_argument("--json", action="store_true", help="print a JSON list of rows")
    kpis.add_argument("--day", metavar="YYYY-MM-DD", help="only this UTC day")
    kpis.add_argument("--device", metavar="ID", help="only this device")
    kpis.set_defaults(handler=cmd_kpis)

    from .status import BATCH_STATES

    batches = commands.add_parser(
        "batches",
        help="list the outbox's batches by state, with central's reason",
        description="List the batches of the outbox ledger by state (flagged, exported, "
        "reserved, dropped; uploaded ones only counted unless asked for) with the HTTP "
        "status and reason of the last attempt. Works while the agent runs.",
    )
    _add_config(batches)
    batches.add_argument(
        "--state", action="append", choices=BATCH_STATES, metavar="STATE",
        help=f"only this state (repeatable; one of {', '.join(BATCH_STATES)}); default: "
        "every state but uploaded",
    )  # fmt: skip
    batches.add_argument("--json", action="store_true", help="print one JSON object")
    batches.set_defaults(handler=cmd_batches)

    requeue = commands.add_parser(
        "requeue",
        help="put flagged batches (409, 400, 413, 422) back to be uploaded",
        description="Put flagged batches back in the upload queue: central refused them for "
        "good (409, 400, 413, 422) and the agent never retries them by itself. Fix the "
        "cause first (see docs/operations.md, 'A flagged batch'). A batch whose file is "
        "missing or changed is only put back with --rebuild, which writes it again from "
        "its readings in the buffer. Safe while the agent runs; its next upload round "
        "sends them (or run fleetpulse agent flush). Exit 0 when every batch named is "
        "waiting for upload (or uploaded), 1 when one could not be put back, 2 on bad usage "
        "(no batch id and no --all, or an unknown batch id).",
    )
    _add_config(requeue)
    requeue.add_argument(
        "batch_ids", nargs="*", metavar="BATCH_ID",
        help="flagged batches to put back (see fleetpulse agent batches)",
    )  # fmt: skip
    requeue.add_argument("--all", action="store_true", help="every flagged batch")
    requeue.add_argument(
        "--rebuild", action="store_true",
        help="write a missing or changed batch file again from the buffer's readings",
    )  # fmt: skip
    requeue.add_argument("--json", action="store_true", help="print a JSON list of outcomes")
    requeue.set_defaults(handler=cmd_requeue)


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


def cmd_flush(args: argparse.Namespace) -> int:
    """``agent flush``: DAG, export, upload now."""
    from .scheduler import Stages

    try:
        cfg = _load(args)
        stages = Stages(cfg)
    except AgentError as exc:
        return _fail("flush", exc)
    try:
        res = stages.flush()
        waiting = stages.uploader.conn.execute(
            "SELECT count(*) FROM batches WHERE state IN ('exported', 'reserved')"
        ).fetchone()[0]
    except AgentError as exc:
        return _fail("flush", exc)
    finally:
        stages.close()
    up = res.upload
    assert up is not None
    summary = {
        "kpi_rows": res.dag_rows,
        "exported": res.exported,
        "uploaded": up.uploaded,
        "flagged": [{"batch_id": b, "status": s, "reason": r} for b, s, r in up.flagged],
        "waiting_batches": waiting,
        "error": up.error or (up.skipped if waiting else None),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"DAG: {res.dag_rows} KPI rows; exported {len(res.exported)} batch(es); "
            f"uploaded {len(up.uploaded)}; flagged {len(up.flagged)}; waiting {waiting}"
        )
    if up.flagged:
        bid, status, reason = up.flagged[0]
        print(f"fleetpulse agent flush: central refused batch {bid} ({status}): {reason}; "
              "it is flagged (see agent status)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    if waiting:
        why = up.error or up.skipped or "unknown reason"
        print(f"fleetpulse agent flush: {waiting} batch(es) not uploaded: {why}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def cmd_kpis(args: argparse.Namespace) -> int:
    """``agent kpis``: the local KPI rows."""
    from .buffer import open_readonly
    from .errors import StoreError

    cols = ("day", "device_id", "site", "up_s", "down_s", "unknown_s", "device_uptime",
            "connectivity_ratio", "eligible_s", "heartbeat_s")  # fmt: skip
    try:
        cfg = _load(args)
        conn = open_readonly(cfg.db_path)
        where, params = [], []
        if args.day:
            where.append("day = ?")
            params.append(args.day)
        if args.device:
            where.append("device_id = ?")
            params.append(args.device)
        sql = f"SELECT {', '.join(cols)} FROM kpis"
        if where:
            sql += " WHERE " + " AND ".join(where)
        try:
            rows = conn.execute(sql + " ORDER BY day, device_id", params).fetchall()
        except Exception as exc:
            raise StoreError(f"cannot read the KPI rows of {cfg.db_path}: {exc}") from exc
        finally:
            conn.close()
    except AgentError as exc:
        return _fail("kpis", exc)
    records = [dict(zip(cols, r, strict=True)) for r in rows]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print("no KPI rows yet: the DAG runs every [schedule] dag_interval_s, or run "
              "fleetpulse agent flush")  # fmt: skip
        return 0
    print(f"{'day':<10}  {'device_id':<20} {'site':<12} {'up_s':>9} {'down_s':>9} "
          f"{'unknown_s':>9} {'uptime':>7} {'conn':>6}")  # fmt: skip
    for r in records:
        up = "-" if r["device_uptime"] is None else f"{r['device_uptime']:.4f}"
        cr = "-" if r["connectivity_ratio"] is None else f"{r['connectivity_ratio']:.3f}"
        print(f"{r['day']:<10}  {r['device_id']:<20} {r['site'] or '-':<12} {r['up_s']:>9.0f} "
              f"{r['down_s']:>9.0f} {r['unknown_s']:>9.0f} {up:>7} {cr:>6}")  # fmt: skip
    return 0


def cmd_batches(args: argparse.Namespace) -> int:
    """``agent batches``: the outbox ledger by state."""
    from .status import OPEN_STATES, list_batches

    states = tuple(dict.fromkeys(args.state)) if args.state else OPEN_STATES
    try:
        cfg = _load(args)
        listing = list_batches(cfg.db_path, states)
    except AgentError as exc:
        return _fail("batches", exc)
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    counts = listing["counts"]
    print("batches: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not listing["batches"]:
        print(f"no batch is {' or '.join(states)}")
    else:
        print(f"{'batch_id':<32} {'state':<9} {'readings':>8} {'bytes':>10} {'tries':>5} "
              f"{'http':>4}  reason")  # fmt: skip
    for b in listing["batches"]:
        print(f"{b['batch_id']:<32} {b['state']:<9} {b['readings']:>8} {b['bytes'] or 0:>10} "
              f"{b['attempts']:>5} {b['http_status'] or '-':>4}  {b['reason'] or '-'}")  # fmt: skip
    if not args.state and counts.get("uploaded"):
        print(f"({counts['uploaded']} uploaded batch(es) not listed: --state uploaded)")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    """``agent requeue``: flagged batches back to the upload queue."""
    from .buffer import Buffer, open_readonly
    from .upload import requeue

    if bool(args.batch_ids) == bool(args.all):
        print("fleetpulse agent requeue: name the flagged batches (BATCH_ID ...) or pass --all, "
              "not both: list them with fleetpulse agent batches --config PATH",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    try:
        cfg = _load(args)
        open_readonly(cfg.db_path).close()  # a missing buffer: say so, create nothing
        buf = Buffer.open(cfg.db_path)
        try:
            done = requeue(cfg, buf.conn, args.batch_ids or None, rebuild_missing=args.rebuild)
        finally:
            buf.close()
    except AgentError as exc:
        return _fail("requeue", exc)
    if args.json:
        print(json.dumps([d.__dict__ for d in done], indent=2))
    elif not done:
        print("no flagged batch: nothing to do")
    for d in done:
        if not args.json:
            print(f"{d.outcome:<12} {d.batch_id}: {d.detail}")
    if any(d.outcome == "unknown" for d in done):
        bad = ", ".join(d.batch_id for d in done if d.outcome == "unknown")
        print(f"fleetpulse agent requeue: no batch {bad} in {cfg.db_path}: list them with "
              "fleetpulse agent batches --config PATH", file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    failed = [d for d in done if not d.ok]
    if failed:
        print(f"fleetpulse agent requeue: {len(failed)} batch(es) not put back: "
              f"{failed[0].batch_id}: {failed[0].detail}", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    if any(d.outcome in ("requeued", "rebuilt") for d in done) and not args.json:
        print("the agent's next upload round sends them (or: fleetpulse agent flush)")
    return 0
