"""Exceptions of the central side; one root so callers catch ``CentralError`` and nothing else.

Tree::

    CentralError                    any failure the central side reports
    ├── ConfigError                 a config file or FLEETPULSE_* variable is wrong (names the key)
    ├── TokenError                  a token command failed (unknown gateway, bad gateway id)
    ├── UnavailableError            landing store or ledger cannot be reached/written (HTTP 503)
    │   ├── StoreUnavailable
    │   └── LedgerUnavailable
    ├── LedgerConflict              a batch id is already in the ledger (the write-once arbiter)
    ├── ConsolidateError            consolidation failed, nothing published (its branches:
    │                               central/consolidate/errors.py)
    └── UploadRefused               an upload breaks the contract; carries its HTTP status
        ├── BadRequest              400: bad batch id, missing/mismatching Content-SHA256
        ├── Unauthorized            401: no, unknown or revoked token
        ├── Forbidden               403: id prefix, metadata or rows of another gateway
        ├── Conflict                409: the batch id is stored with other content
        ├── TooLarge                413: body over ``max_batch_bytes``
        └── InvalidBatch            422: not Parquet, wrong schema, bad checksum, over a limit

Errors of the layers below (sqlite3, psycopg, pyarrow, OSError) are translated where they
are raised: ``raise LedgerUnavailable(...) from exc``.
"""

from __future__ import annotations


class CentralError(Exception):
    """Central failed."""


class ConfigError(CentralError):
    """The central configuration is invalid."""


class TokenError(CentralError):
    """A gateway token operation failed."""


class UnavailableError(CentralError):
    """A backing service of central is unavailable."""


class StoreUnavailable(UnavailableError):
    """The landing store cannot be written or read."""


class LedgerUnavailable(UnavailableError):
    """The ledger database cannot be reached or written."""


class LedgerConflict(CentralError):
    """The batch id is already recorded in the ledger."""


class UploadRefused(CentralError):
    """An upload was refused; ``status`` is the HTTP status, ``error`` a short code."""

    status = 400
    error = "bad_request"

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if error is not None:
            self.error = error


class BadRequest(UploadRefused):
    """The request is malformed (400)."""

    status = 400
    error = "bad_request"


class Unauthorized(UploadRefused):
    """No valid gateway token (401)."""

    status = 401
    error = "unauthorized"


class Forbidden(UploadRefused):
    """The gateway may not write this batch (403)."""

    status = 403
    error = "forbidden"


class Conflict(UploadRefused):
    """The batch id is already stored with different content (409)."""

    status = 409
    error = "conflict"


class TooLarge(UploadRefused):
    """The body is over the size limit (413)."""

    status = 413
    error = "too_large"


class InvalidBatch(UploadRefused):
    """The body is not a valid batch (422)."""

    status = 422
    error = "invalid_batch"
