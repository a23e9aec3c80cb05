"""The JSON run record: what ran, in which order, on what shapes, with which checks."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

StepStatus = Literal["ok", "cached", "failed", "blocked"]


@dataclass
class StepRecord:
    """One step of a run: status, timing, cache outcome and lineage of its inputs and output."""

    name: str
    status: StepStatus
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    output: dict[str, Any] | None = None
    # per tabular input: columns added, removed and retyped on the way to the output
    schema_diff: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    duration_s: float | None = None
    # hit, miss, off (no cache or step opted out), uncacheable (an input has no fingerprint)
    cache: str = "off"
    error: str | None = None
    # the failed step or gate that kept this step from running
    blocked_by: str | None = None


@dataclass
class RunRecord:
    """A whole run; ``to_json()`` is what ``record_dir`` receives as ``<run_id>.json``."""

    run_id: str
    pipeline: str
    status: Literal["ok", "failed", "running"] = "running"
    started_at: str = ""
    finished_at: str | None = None
    duration_s: float | None = None
    max_workers: int = 1
    requested: list[str] | None = None
    # external inputs: shape and fingerprint (when the cache computed one)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, int] = field(default_factory=lambda: {"hits": 0, "misses": 0})

    def step(self, name: str) -> StepRecord:
        """The record of one step (KeyError if it was not part of the run)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``<folder>/<run_id>.json`` atomically (temp, fsync, rename)."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{self.run_id}.json"
        tmp = root / f".{self.run_id}.json.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path
