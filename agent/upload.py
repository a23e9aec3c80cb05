"""Upload: exported batches → ``PUT /v1/batches/{id}`` on central (DESIGN §5), in order.

Outcomes per answer:

- 201 / 200 → ``uploaded`` (200 is central saying "already stored, same sha256": the
  answer to a retry after a lost response), the file is deleted, the cursor advances;
- 409, 400, 413, 422 → ``flagged`` with the status and central's reason: the batch is
  kept for an operator and never retried blindly; later batches go on;
- 401 / 403 → the token is revoked or belongs to another gateway: no batch is at fault,
  so nothing is flagged, but retrying soon cannot help either. Uploads *pause* for the
  whole gateway (the token is the gateway's): an ERROR names the token file and the fix,
  ``meta.upload_auth_refused_ms`` / ``_status`` carry the alarm to ``agent status`` and
  the metrics, and the token file is read again every round: a changed file (mtime, size
  or text) is tried at once, an unchanged one every ``[central] auth_retry_s``;
- 5xx, 429, timeouts, refused or dropped connections → the round stops and is retried
  with exponential backoff and full jitter capped at ``[central] retry_max_s``, never
  sooner than a ``Retry-After`` asks.

An empty or missing token file means "not registered yet": batches stay in the outbox and
a warning is logged; nothing fails. The HTTP transport is injectable for tests.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from .buffer import META_UPLOADED_UPTO, get_meta, set_meta
from .config import AgentConfig
from .errors import StoreError, UploadError
from .export import file_sha256, rebuild
from .faults import fault_point
from .status import META_AUTH_REFUSED_MS, META_AUTH_STATUS

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
# A Retry-After beyond this is treated as this: a misconfigured proxy must not park us a day.
RETRY_AFTER_CAP_S = 3600.0
# Answers that mean "this batch will never be accepted as it is".
FLAG_STATUSES = frozenset({400, 409, 413, 422})
# Answers that mean "this token will never be accepted": uploads pause for the gateway.
AUTH_STATUSES = frozenset({401, 403})


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def full_jitter(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """AWS "full jitter": uniform in [0, min(cap, base * 2**attempt))."""
    return rand() * min(cap, base * 2 ** min(attempt, 40))


def clamp_deadline(deadline_ms: int, now_ms: int, longest_ms: int) -> int:
    """A wait deadline never further away than the wait that set it.

    Deadlines are wall-clock (the clock is injected for tests); after the gateway's clock
    jumps back, the remaining wait would grow by the jump (24 h back → uploads parked for a
    day). Capping the remainder at the wait that was set bounds it at one more wait.
    """
    return min(deadline_ms, now_ms + max(0, longest_ms))


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - now_s), RETRY_AFTER_CAP_S)


def read_token(path: Path | None) -> str | None:
    """The token (first line of ``token_file``), or None when not registered yet."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UploadError(
            f"[central] token_file {str(path)!r} cannot be read ({exc.strerror}): fix its "
            "permissions"
        ) from exc
    return text.splitlines()[0].strip() if text else None


def token_signature(path: Path | None) -> tuple[int, int] | None:
    """(mtime_ns, size) of the token file, None when it is missing: a cheap "did it change"."""
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class AuthPause:
    """Central refused the token: uploads wait for a new one (or ``auth_retry_s``)."""

    status: int
    reason: str
    token: str
    signature: tuple[int, int] | None
    since_ms: int
    retry_at_ms: int


@dataclass
class RoundResult:
    """What one upload round did."""

    uploaded: list[str] = field(default_factory=list)
    flagged: list[tuple[str, int, str]] = field(default_factory=list)
    # why the round stopped early (central unreachable, 5xx, token), None if it did not
    error: str | None = None
    retry_in_s: float | None = None
    skipped: str | None = None  # why nothing was tried (backoff, not registered, no url)
    auth_refused: int | None = None  # 401/403 while uploads are paused for the token


@dataclass
class UploadStats:
    """Counters for metrics."""

    successes: int = 0
    failures: int = 0
    flagged: int = 0
    bytes: int = 0
    auth_failures: int = 0
    last_error: str | None = None


class Uploader:
    """Uploads the outbox in sequence order; one instance per process, one round at a time."""

    def __init__(
        self,
        cfg: AgentConfig,
        conn: sqlite3.Connection,
        *,
        transport: httpx.BaseTransport | None = None,
        clock_ms: Callable[[], int] = wall_ms,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self.conn = conn
        self._clock_ms = clock_ms
        self._rand = rand
        self._attempt = 0
        self._not_before_ms = 0
        self._wait_ms = 0  # the backoff that set _not_before_ms
        self._warned_token = False
        self.auth_pause: AuthPause | None = None
        self.stats = UploadStats()
        self._client: httpx.Client | None = None
        if cfg.central.url is not None:
            self._client = httpx.Client(
                base_url=cfg.central.url,
                transport=transport,
                timeout=cfg.central.timeout_s,
                headers={"User-Agent": f"fleetpulse-agent/{cfg.gateway_id}"},
            )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def run(self, *, force: bool = False) -> RoundResult:
        """Upload what is due; ``force`` ignores the backoff (``agent flush``)."""
        res = RoundResult()
        if self._client is None:
            res.skipped = "no [central] url configured: batches stay in the outbox"
            return res
        now = self._clock_ms()
        self._not_before_ms = clamp_deadline(self._not_before_ms, now, self._wait_ms)
        if not force and now < self._not_before_ms:
            res.skipped = f"backing off for {(self._not_before_ms - now) / 1000:.1f} s more"
            return res
        token = read_token(self.cfg.central.token_file)
        if token is None:
            res.skipped = (
                f"gateway not registered yet: [central] token_file "
                f"{str(self.cfg.central.token_file)!r} is empty or missing; batches are kept "
                "until a token is written there"
            )
            if not self._warned_token:
                log.warning("%s", res.skipped)
                self._warned_token = True
            return res
        self._warned_token = False
        if self.auth_pause is not None and not force and self._still_paused(token, now):
            pause = self.auth_pause
            res.skipped = pause.reason
            res.auth_refused = pause.status
            res.retry_in_s = max(0.0, (pause.retry_at_ms - now) / 1000)
            return res
        try:
            pending = self.conn.execute(
                "SELECT seq, batch_id, path, sha256 FROM batches WHERE state = 'exported'"
                " ORDER BY seq"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the outbox ledger: {exc}") from exc
        for seq, bid, path, digest in pending:
            if not self._one(seq, bid, Path(path), digest, token, res):
                break
        return res

    def _still_paused(self, token: str, now_ms: int) -> bool:
        """While central refuses the token: False when it is time to try again."""
        pause = self.auth_pause
        assert pause is not None
        path = self.cfg.central.token_file
        if token != pause.token or token_signature(path) != pause.signature:
            log.info("[central] token_file %s changed: trying the upload again", path)
            return False
        try:
            cleared = get_meta(self.conn, META_AUTH_REFUSED_MS) == 0
        except sqlite3.Error:
            cleared = False
        if cleared:  # another process (agent flush) got through with this token
            log.info("an upload with this token succeeded elsewhere: trying again")
            return False
        wait_ms = int(self.cfg.central.auth_retry_s * 1000)
        pause.retry_at_ms = clamp_deadline(pause.retry_at_ms, now_ms, wait_ms)
        return now_ms < pause.retry_at_ms

    # -- one batch ------------------------------------------------------------------------

    def _one(
        self, seq: int, bid: str, path: Path, digest: str, token: str, res: RoundResult
    ) -> bool:
        """Try one batch; False when the round must stop (transient failure)."""
        assert self._client is not None
        body = self._body(seq, bid, path, digest)
        digest = file_sha256(path)[0] if body is None else digest
        if body is None:
            body = path.read_bytes()
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-SHA256": digest,
            "Content-Type": "application/vnd.apache.parquet",
        }
        try:
            resp = self._client.put(f"/v1/batches/{bid}", content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return self._transient(seq, bid, None, f"timed out ({type(exc).__name__})", None, res)
        except httpx.TransportError as exc:
            return self._transient(
                seq, bid, None, f"cannot reach {self.cfg.central.url}: {exc or type(exc).__name__}",
                None, res,
            )  # fmt: skip
        status = resp.status_code
        if status in (200, 201):
            fault_point("after_upload_before_mark")
            self._mark_uploaded(seq, status)
            with contextlib.suppress(OSError):
                path.unlink()
            self._attempt = 0
            self._not_before_ms = 0
            self._auth_accepted()
            self.stats.successes += 1
            self.stats.bytes += len(body)
            res.uploaded.append(bid)
            log.info("uploaded %s (%d bytes): %d", bid, len(body), status)
            return True
        reason = _reason(resp)
        if status in FLAG_STATUSES:
            self._flag(seq, status, reason)
            self.stats.flagged += 1
            res.flagged.append((bid, status, reason))
            log.error(
                "central refused batch %s with %d (%s): flagged for an operator, not retried; "
                "later batches go on",
                bid,
                status,
                reason,
            )
            return True
        if status in AUTH_STATUSES:
            return self._auth_refused(seq, bid, status, reason, token, res)
        reason = f"central answered {status}: {reason}"
        wait = retry_after_s(resp.headers.get("Retry-After"), self._clock_ms() / 1000)
        return self._transient(seq, bid, status, reason, wait, res)

    def _body(self, seq: int, bid: str, path: Path, digest: str) -> bytes | None:
        """The file's bytes if they still match the recorded sha256, else rebuild (None)."""
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            body = None
        if body is not None and file_sha256(path)[0] == digest:
            return body
        log.warning("batch file %s is missing or changed on disk: writing it again", path)
        new = rebuild(self.cfg.db_path, self.conn, self.cfg.gateway_id, seq)
        if new != digest:
            log.warning("batch %s rebuilt with another sha256 (%s, was %s)", bid, new, digest)
            self.conn.execute("UPDATE batches SET sha256 = ? WHERE seq = ?", (new, seq))
        return None

    def _transient(
        self,
        seq: int,
        bid: str,
        status: int | None,
        reason: str,
        retry_after: float | None,
        res: RoundResult,
    ) -> bool:
        delay = full_jitter(self._attempt, BACKOFF_BASE_S, self.cfg.central.retry_max_s, self._rand)
        if retry_after is not None:
            delay = max(delay, retry_after)
        self._attempt += 1
        self._wait_ms = int(delay * 1000)
        self._not_before_ms = self._clock_ms() + self._wait_ms
        self.stats.failures += 1
        self.stats.last_error = reason
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute(
                "UPDATE batches SET attempts = attempts + 1, next_attempt_ms = ?,"
                " http_status = ?, last_error = ? WHERE seq = ?",
                (self._not_before_ms, status, reason[:500], seq),
            )
        res.error = f"batch {bid}: {reason}"
        res.retry_in_s = delay
        log.warning("upload of %s failed: %s; retrying in %.1f s", bid, reason, delay)
        return False

    def _auth_refused(
        self, seq: int, bid: str, status: int, detail: str, token: str, res: RoundResult
    ) -> bool:
        """401/403: pause uploads for the gateway until the token changes (or a slow retry)."""
        c = self.cfg.central
        now = self._clock_ms()
        why = "revoked or unknown" if status == 401 else "made for another gateway"
        reason = (
            f"central refused the token ({status}: {detail}): it is {why}; uploads are "
            f"paused for gateway {self.cfg.gateway_id} and batches are kept. Fix: on central "
            f"run `fleetpulse central token create {self.cfg.gateway_id}` and write the token "
            f"to [central] token_file {c.token_file}; the agent tries again when that file "
            f"changes, else every {c.auth_retry_s:g} s"
        )
        first = self.auth_pause is None
        since = now if self.auth_pause is None else self.auth_pause.since_ms
        self.auth_pause = AuthPause(
            status=status,
            reason=reason,
            token=token,
            signature=token_signature(c.token_file),
            since_ms=since,
            retry_at_ms=now + int(c.auth_retry_s * 1000),
        )
        self.stats.failures += 1
        self.stats.auth_failures += 1
        self.stats.last_error = reason
        with contextlib.suppress(sqlite3.Error):
            if first or get_meta(self.conn, META_AUTH_REFUSED_MS) == 0:
                set_meta(self.conn, META_AUTH_REFUSED_MS, self.auth_pause.since_ms)
            set_meta(self.conn, META_AUTH_STATUS, status)
            self.conn.execute(
                "UPDATE batches SET attempts = attempts + 1, next_attempt_ms = ?,"
                " http_status = ?, last_error = ? WHERE seq = ?",
                (self.auth_pause.retry_at_ms, status, reason[:500], seq),
            )
        res.error = f"batch {bid}: {reason}"
        res.retry_in_s = c.auth_retry_s
        res.auth_refused = status
        log.error("upload of %s: %s", bid, reason)
        return False

    def _auth_accepted(self) -> None:
        """An upload went through: clear the token alarm if it was up."""
        if self.auth_pause is not None:
            log.info(
                "central accepts the token in %s again: uploads resume",
                self.cfg.central.token_file,
            )
            self.auth_pause = None
        with contextlib.suppress(sqlite3.Error):
            if get_meta(self.conn, META_AUTH_REFUSED_MS):
                set_meta(self.conn, META_AUTH_REFUSED_MS, 0)
                set_meta(self.conn, META_AUTH_STATUS, 0)

    def _flag(self, seq: int, status: int, reason: str) -> None:
        try:
            self.conn.execute(
                "UPDATE batches SET state = 'flagged', http_status = ?, last_error = ?,"
                " attempts = attempts + 1 WHERE seq = ?",
                (status, reason[:500], seq),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot flag batch {seq}: {exc}") from exc

    def _mark_uploaded(self, seq: int, status: int) -> None:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "UPDATE batches SET state = 'uploaded', uploaded_ms = ?, http_status = ?,"
                    " attempts = attempts + 1, last_error = NULL WHERE seq = ?",
                    (self._clock_ms(), status, seq),
                )
                set_meta(conn, META_UPLOADED_UPTO, uploaded_prefix(conn))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot mark batch {seq} uploaded: {exc}") from exc


def uploaded_prefix(conn: sqlite3.Connection) -> int:
    """The highest reading id below which every batch is uploaded."""
    blocker = conn.execute("SELECT min(seq) FROM batches WHERE state != 'uploaded'").fetchone()[0]
    if blocker is None:
        row = conn.execute("SELECT max(last_id) FROM batches").fetchone()
    else:
        row = conn.execute("SELECT max(last_id) FROM batches WHERE seq < ?", (blocker,)).fetchone()
    return int(row[0] or 0)


def _reason(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)[:500]
    return str(body)[:500]


# -- operator: put flagged batches back ---------------------------------------------------


@dataclass(frozen=True)
class Requeue:
    """What ``requeue`` did with one batch; ``ok`` False: it is not waiting for upload."""

    batch_id: str
    outcome: str  # requeued | rebuilt | waiting | uploaded | missing_file | cannot | unknown
    detail: str
    ok: bool


def requeue(
    cfg: AgentConfig,
    conn: sqlite3.Connection,
    batch_ids: list[str] | None,
    *,
    rebuild_missing: bool = False,
) -> list[Requeue]:
    """Flagged batches (``batch_ids``; None: every flagged one) back to ``exported``.

    A batch whose file is missing or changed on disk is put back only with
    ``rebuild_missing`` (the file is written again from its readings in the buffer, the
    path ``Uploader`` takes for a missing file); otherwise the outcome says so.
    """
    try:
        if batch_ids is None:
            rows = conn.execute(
                "SELECT seq, batch_id, state, path, sha256, first_id, last_id, readings,"
                " http_status, last_error FROM batches WHERE state = 'flagged' ORDER BY seq"
            ).fetchall()
        else:
            rows = []
            for bid in batch_ids:
                row = conn.execute(
                    "SELECT seq, batch_id, state, path, sha256, first_id, last_id, readings,"
                    " http_status, last_error FROM batches WHERE batch_id = ?",
                    (bid,),
                ).fetchone()
                rows.append(row if row is not None else (None, bid) + (None,) * 8)
        return [_requeue_one(cfg, conn, row, rebuild_missing) for row in rows]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot update the outbox ledger {cfg.db_path}: {exc}") from exc


def _requeue_one(
    cfg: AgentConfig, conn: sqlite3.Connection, row: tuple, rebuild_missing: bool
) -> Requeue:
    seq, bid, state, path, digest, first, last, readings, status, reason = row
    if seq is None:
        return Requeue(bid, "unknown", "no such batch in the buffer: list them with "
                       "fleetpulse agent batches --config PATH", False)  # fmt: skip
    if state == "exported":
        return Requeue(bid, "waiting", "already waiting for upload", True)
    if state == "uploaded":
        return Requeue(bid, "uploaded", "already uploaded: nothing to do", True)
    if state != "flagged":
        why = {
            "reserved": "its export is not finished: the next export run completes it",
            "dropped": "its readings were deleted by on_full = drop_oldest: it cannot be sent",
        }.get(state, f"state {state!r}")
        return Requeue(bid, "cannot", f"not flagged ({state}): {why}", False)
    was = f"was {status}: {reason}" if status else f"was flagged: {reason}"
    file = Path(path)
    problem = None
    if not file.is_file():
        problem = f"its file {file} is missing"
    elif file_sha256(file)[0] != digest:
        problem = f"its file {file} changed on disk (sha256 differs from the recorded one)"
    outcome = "requeued"
    if problem is not None:
        present = conn.execute(
            "SELECT count(*) FROM readings WHERE id BETWEEN ? AND ?", (first, last)
        ).fetchone()[0]
        if present != readings:
            return Requeue(bid, "cannot", f"{problem} and only {present} of its {readings} "
                           "readings are still in the buffer: it cannot be written again",
                           False)  # fmt: skip
        if not rebuild_missing:
            return Requeue(bid, "missing_file", f"{problem}; its {readings} readings are still "
                           "in the buffer: run again with --rebuild to write it from them",
                           False)  # fmt: skip
        new = rebuild(cfg.db_path, conn, cfg.gateway_id, seq)
        size = file.stat().st_size
        conn.execute("UPDATE batches SET sha256 = ?, bytes = ? WHERE seq = ?", (new, size, seq))
        outcome = "rebuilt"
        was += f"; file written again from {readings} readings (sha256 {new[:12]}…)"
    cur = conn.execute(
        "UPDATE batches SET state = 'exported', next_attempt_ms = 0, last_error = ?"
        " WHERE seq = ? AND state = 'flagged'",
        (f"requeued by an operator ({was})"[:500], seq),
    )
    if cur.rowcount != 1:
        return Requeue(bid, "cannot", "its state changed meanwhile: look again", False)
    log.info("batch %s put back for upload (%s)", bid, was)
    hint = ""
    if status == 409:
        hint = (
            "; central holds other content under this id: unless that copy was removed "
            "on central, it will be flagged again"
        )
    return Requeue(bid, outcome, f"waiting for upload ({was}){hint}", True)
