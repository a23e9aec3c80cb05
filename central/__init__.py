"""Central: ingest API, landing store and ledger, fan-in consolidation, Delta gold, report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import CentralConfig, load_config
from .errors import (
    BadRequest,
    CentralError,
    ConfigError,
    Conflict,
    Forbidden,
    InvalidBatch,
    LedgerConflict,
    LedgerUnavailable,
    StoreUnavailable,
    TokenError,
    TooLarge,
    Unauthorized,
    UnavailableError,
    UploadRefused,
)
from .landing import LandingStore, landing_path
from .ledger import Ledger, LedgerBatch, TokenRecord, open_ledger

if TYPE_CHECKING:
    from .api import create_app

__all__ = [
    "BadRequest",
    "CentralConfig",
    "CentralError",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InvalidBatch",
    "LandingStore",
    "Ledger",
    "LedgerBatch",
    "LedgerConflict",
    "LedgerUnavailable",
    "StoreUnavailable",
    "TokenError",
    "TokenRecord",
    "TooLarge",
    "Unauthorized",
    "UnavailableError",
    "UploadRefused",
    "create_app",
    "landing_path",
    "load_config",
    "open_ledger",
]


def __getattr__(name: str) -> Any:
    # The web stack loads only for whoever serves: consolidation imports central too.
    if name == "create_app":
        from .api import create_app

        return create_app
    raise AttributeError(f"module 'central' has no attribute {name!r}")
