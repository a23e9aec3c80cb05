"""``agent status``: what the buffer holds, read through its own read-only connection."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from schemas import utc_from_ms

from .buffer import META_UPLOADED_UPTO, open_readonly
from .errors import StoreError

_BATCH_STATES = ("reserved", "exported", "uploaded", "flagged", "dropped")
# meta keys of the upload token alarm (agent/upload.py; 0: none): since when central has
# refused the token, and its answer (401 or 403).
META_AUTH_REFUSED_MS = "upload_auth_refused_ms"
META_AUTH_STATUS = "upload_auth_status"


def _iso(ms: int | None) -> str | None:
    return None if ms is None else utc_from_ms(ms).isoformat().replace("+00:00", "Z")


def db_bytes(path: Path) -> int:
    """Size of the database with its WAL and shared-memory files (what the disk holds)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += path.with_name(path.name + suffix).stat().st_size
    return total


def collect(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The status figures, from one read transaction so they agree with each other."""
    try:
        conn.execute("BEGIN")
        try:
            uploaded_upto = conn.execute(
                "SELECT value FROM meta WHERE key = ?", (META_UPLOADED_UPTO,)
            ).fetchone()[0]
            readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
            pending, oldest = conn.execute(
                "SELECT count(*), min(ts_ms) FROM readings WHERE id > ?", (uploaded_upto,)
            ).fetchone()
            quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            reasons = conn.execute(
                "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason"
                " ORDER BY n DESC, reason LIMIT 5"
            ).fetchall()
            intervals, observed_ms = conn.execute(
                "SELECT count(*), coalesce(sum(coalesce(end_ms, alive_ms) - start_ms), 0)"
                " FROM observations"
            ).fetchone()
            open_row = conn.execute(
                "SELECT start_ms, alive_ms FROM observations WHERE end_ms IS NULL"
                " ORDER BY id DESC LIMIT 1"
            ).fetchone()
            last_received = conn.execute("SELECT max(received_ms) FROM readings").fetchone()[0]
            states = dict(
                conn.execute("SELECT state, count(*) FROM batches GROUP BY state").fetchall()
            )
            flagged = conn.execute(
                "SELECT batch_id, http_status, last_error FROM batches WHERE state = 'flagged'"
                " ORDER BY seq LIMIT 20"
            ).fetchall()
            waiting = conn.execute(
                "SELECT coalesce(sum(bytes), 0), min(created_ms), max(last_error) FROM batches"
                " WHERE state = 'exported'"
            ).fetchone()
            last_upload = conn.execute("SELECT max(uploaded_ms) FROM batches").fetchone()[0]
            dropped = conn.execute("SELECT value FROM meta WHERE key = 'dropped_rows'").fetchone()
            auth = dict(
                conn.execute(
                    "SELECT key, value FROM meta WHERE key IN (?, ?)",
                    (META_AUTH_REFUSED_MS, META_AUTH_STATUS),
                ).fetchall()
            )
            auth_reason = conn.execute(
                "SELECT last_error FROM batches WHERE state = 'exported' AND http_status IN"
                " (401, 403) ORDER BY seq LIMIT 1"
            ).fetchone()
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the buffer {path}: {exc}") from exc
    return {
        "db_path": str(path),
        "db_bytes": db_bytes(path),
        "readings_total": readings,
        "quarantined_total": quarantined,
        "quarantine_top_reasons": [{"reason": r, "count": n} for r, n in reasons],
        "pending_upload_rows": pending,
        "oldest_pending_ts": _iso(oldest),
        "oldest_pending_ts_ms": oldest,
        "uploaded_upto_id": uploaded_upto,
        "last_received_ts": _iso(last_received),
        # An open interval means "connected now" only while the agent runs; after a kill
        # it stays open until the next start closes it at alive_ms.
        "subscribed_since": _iso(open_row[0]) if open_row else None,
        "last_alive_ts": _iso(open_row[1]) if open_row else None,
        "observation_intervals": intervals,
        "observed_seconds": observed_ms / 1000,
        "batches": {k: states.get(k, 0) for k in _BATCH_STATES},
        "outbox_bytes": waiting[0],
        "oldest_waiting_batch_ts": _iso(waiting[1]),
        "last_upload_error": waiting[2],
        "last_upload_ts": _iso(last_upload),
        # 409 and other refusals: kept for an operator, never retried blindly
        "flagged_batches": [{"batch_id": b, "status": st, "reason": r} for b, st, r in flagged],
        "dropped_rows": int(dropped[0]) if dropped else 0,
        # 401/403: uploads paused for the gateway until a new token is written
        "upload_auth_refused": _auth(auth, auth_reason),
    }


def _auth(meta: dict[str, int], reason: tuple[str | None] | None) -> dict[str, Any] | None:
    since = meta.get(META_AUTH_REFUSED_MS, 0)
    if not since:
        return None
    return {
        "status": meta.get(META_AUTH_STATUS) or None,
        "since": _iso(since),
        "reason": reason[0] if reason else None,
    }


def read_status(path: Path) -> dict[str, Any]:
    """Open the buffer read-only, collect the figures, close."""
    conn = open_readonly(path)
    try:
        return collect(conn, path)
    finally:
        conn.close()


def format_text(status: dict[str, Any]) -> str:
    """The human form of ``agent status``: one ``key: value`` per line."""
    lines = []
    for key, value in status.items():
        if key == "upload_auth_refused" and value is not None:
            lines.append(
                f"UPLOAD PAUSED: central refused the token ({value['status']}) since "
                f"{value['since']}: {value['reason'] or 'see the agent log'}"
            )
            continue
        if key == "flagged_batches":
            for item in value:
                lines.append(f"  FLAGGED {item['batch_id']}  {item['status']}  {item['reason']}")
            continue
        if key == "batches":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        if key == "quarantine_top_reasons":
            for item in value:
                lines.append(f"  quarantined {item['count']:>8}  {item['reason']}")
            continue
        lines.append(f"{key}: {'-' if value is None else value}")
    return "\n".join(lines)


BATCH_COLUMNS = ("batch_id", "state", "readings", "observations", "bytes", "created_ms",
                 "uploaded_ms", "attempts", "http_status", "last_error")  # fmt: skip
# ``agent batches`` lists these when no --state is given (uploaded ones are only counted)
OPEN_STATES = ("flagged", "exported", "reserved", "dropped")
BATCH_STATES = _BATCH_STATES


def list_batches(path: Path, states: tuple[str, ...] = OPEN_STATES) -> dict[str, Any]:
    """Batches in ``states`` (state order, then sequence) and the count of every state."""
    conn = open_readonly(path)
    try:
        marks = ", ".join("?" * len(states))
        cols = ", ".join(BATCH_COLUMNS)
        rows = conn.execute(
            f"SELECT {cols} FROM batches WHERE state IN ({marks}) ORDER BY seq", states
        ).fetchall()
        counts = dict(conn.execute("SELECT state, count(*) FROM batches GROUP BY state"))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the outbox ledger of {path}: {exc}") from exc
    finally:
        conn.close()
    records = [dict(zip(BATCH_COLUMNS, r, strict=True)) for r in rows]
    records.sort(key=lambda r: states.index(r["state"]))  # stable: seq within a state
    for r in records:
        r["created"] = _iso(r.pop("created_ms"))
        r["uploaded"] = _iso(r.pop("uploaded_ms"))
        r["reason"] = r.pop("last_error")
    return {"counts": {k: counts.get(k, 0) for k in _BATCH_STATES}, "batches": records}
