"""Fan-in consolidation: landed batches + registry + firmware + alerts → gold Delta tables.

One Ibis definition (bronze.py, silver.py, gold.py) runs on DuckDB or Spark (engine.py);
runner.py plans, gates, publishes and records. Names are imported lazily so that
``fleetpulse central serve`` does not load Ibis.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "consolidate": "runner",
    "Outcome": "runner",
    "run_dag": "compute",
    "KpiSettings": "dag",
    "GOLD_TABLES": "dag",
    "connect": "engine",
    "Engine": "engine",
    "ConsolidateError": "errors",
    "GateRejected": "errors",
    "SourceError": "errors",
    "EngineError": "errors",
    "PublishError": "errors",
    "StateError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
