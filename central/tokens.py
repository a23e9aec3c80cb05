"""Gateway tokens: create, verify (constant time), revoke; only a hash of the secret is stored.

A token reads ``fp1.<token_id>.<secret>``. The id is a public lookup key (so verifying is
one primary-key read, not a scan); the secret has 256 random bits, so a plain SHA-256 of it
is enough (no slow KDF needed against guessing), compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from .errors import LedgerConflict, TokenError, Unauthorized
from .ledger import Ledger, TokenRecord

# Gateway ids name batch ids and paths: the batch id alphabet, and short enough that
# "<gateway>-<10 digits>" stays within BATCH_ID_RE's 128 characters.
GATEWAY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TOKEN_RE = re.compile(r"^fp1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


def check_gateway_id(gateway_id: str) -> str:
    if not GATEWAY_ID_RE.match(gateway_id):
        raise TokenError(
            f"gateway id {gateway_id!r} is not valid: 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return gateway_id


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(ledger: Ledger, gateway_id: str, now_ms: int) -> tuple[str, TokenRecord]:
    """A new token for ``gateway_id``; the returned string is shown once and never stored."""
    check_gateway_id(gateway_id)
    for _ in range(3):
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        record = TokenRecord(token_id, gateway_id, _hash(secret), now_ms, None)
        try:
            ledger.add_token(record)
        except LedgerConflict:  # a 64-bit id collision: astronomically rare, just redraw
            continue
        return f"fp1.{token_id}.{secret}", record
    raise TokenError("could not draw a unique token id; try again")


def revoke_tokens(ledger: Ledger, gateway_id: str, now_ms: int, token_id: str | None = None) -> int:
    """Revoke the gateway's active tokens (or the one ``token_id``); error if none was active."""
    check_gateway_id(gateway_id)
    n = ledger.revoke_tokens(gateway_id, now_ms, token_id)
    if n == 0:
        which = f"token {token_id!r} of gateway" if token_id else "gateway"
        raise TokenError(
            f"{which} {gateway_id!r} has no active token to revoke "
            "(see: fleetpulse central token list)"
        )
    return n


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or ``Unauthorized``."""
    if not authorization:
        raise Unauthorized(
            "no Authorization header: send 'Authorization: Bearer <gateway token>' "
            "(create one with: fleetpulse central token create GATEWAY_ID)",
            "no_token",
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header is not 'Bearer <gateway token>'", "bad_token")
    return token.strip()


def verify_token(ledger: Ledger, token: str) -> str:
    """The gateway id of a valid, unrevoked ``token``; ``Unauthorized`` otherwise."""
    m = _TOKEN_RE.match(token)
    record = ledger.get_token(m.group(1)) if m else None
    presented = _hash(m.group(2)) if m else _hash(token)
    stored = record.secret_sha256 if record else _DUMMY_HASH
    # compare even when the id is unknown, so timing does not tell ids apart
    ok = hmac.compare_digest(presented, stored) and record is not None
    if not ok or record is None:
        raise Unauthorized("gateway token is not valid: check the agent's token", "bad_token")
    if not record.active:
        raise Unauthorized(
            f"gateway token {record.token_id} was revoked: create a new one with "
            f"fleetpulse central token create {record.gateway_id}",
            "revoked_token",
        )
    return record.gateway_id
