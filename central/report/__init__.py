"""The HTML report on the gold tables: why fleet uptime moved, in plots, tables and lineage."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .build import build_report, make_plots, write_report
    from .data import Gold, RunInfo, TableVersion, latest_run, load_gold
    from .errors import GoldInvalid, GoldMissing, ReportError, ReportWriteError
    from .lineage import Lineage, lineage
    from .summary import Summary, summarize

# name -> submodule; loaded on first use, so ``fleetpulse central serve`` (which imports the
# report's CLI registrar) does not pay for matplotlib and deltalake.
_WHERE = {
    "build_report": "build",
    "make_plots": "build",
    "write_report": "build",
    "Gold": "data",
    "RunInfo": "data",
    "TableVersion": "data",
    "latest_run": "data",
    "load_gold": "data",
    "GoldInvalid": "errors",
    "GoldMissing": "errors",
    "ReportError": "errors",
    "ReportWriteError": "errors",
    "Lineage": "lineage",
    "lineage": "lineage",
    "Summary": "summary",
    "summarize": "summary",
}

__all__ = [
    "Gold",
    "GoldInvalid",
    "GoldMissing",
    "Lineage",
    "ReportError",
    "ReportWriteError",
    "RunInfo",
    "Summary",
    "TableVersion",
    "build_report",
    "latest_run",
    "lineage",
    "load_gold",
    "make_plots",
    "summarize",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
