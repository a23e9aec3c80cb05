"""Exceptions of consolidation, all under ``CentralError`` so the CLI catches one root.

Tree (a branch of the one in ``central/errors.py``)::

    CentralError
    └── ConsolidateError            consolidation failed; nothing was published
        ├── SourceError             a source file (registry, firmware, alerts, batch) is unreadable
        │                           or breaks its schema; names the file and the column
        ├── EngineError             DuckDB or Spark failed or is missing (names the engine)
        ├── GateRejected            a validation gate rejected rows; carries the gate results
        ├── PublishError            writing a Delta table failed (names the table)
        └── StateError              the consolidation state or run records cannot be used

DuckDB, Spark (py4j), fastavro, pyarrow and deltalake errors are translated where they are
raised: ``raise EngineError(...) from exc``.
"""

from __future__ import annotations

from typing import Any

from central.errors import CentralError


class ConsolidateError(CentralError):
    """Consolidation failed; nothing was published."""


class SourceError(ConsolidateError):
    """A source file is unreadable or breaks its schema."""


class EngineError(ConsolidateError):
    """The query engine failed or is not installed."""


class GateRejected(ConsolidateError):
    """A validation gate rejected rows; ``results`` are the failed gate results."""

    def __init__(self, message: str, results: list[Any]) -> None:
        super().__init__(message)
        self.results = results


class PublishError(ConsolidateError):
    """Writing a gold Delta table failed."""


class StateError(ConsolidateError):
    """The consolidation state or the run records cannot be read or written."""
