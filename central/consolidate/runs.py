"""Run records: one JSON file per consolidation under ``<data_dir>/runs/`` (the lineage).

A record holds the input batches (id, gateway, sha256, rows), the source files and their
checksums, the plan (mode, days, devices in scope), the DAG's own record (each step's
schema, rows before and after, duration, cache outcome; gate results), and what was
published (Delta version per table).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StateError


def runs_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "runs"


def write_record(data_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``<data_dir>/runs/<run_id>.json`` atomically (temp, fsync, rename, fsync dir)."""
    folder = runs_dir(data_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{record['run_id']}.json"
        tmp = folder / f".{record['run_id']}.json.tmp"
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateError(f"cannot write the run record in {folder}: {exc}") from exc
    return path


@dataclass(frozen=True)
class RunSummary:
    """One line of ``fleetpulse central runs``."""

    run_id: str
    started_at: str
    status: str
    engine: str
    mode: str
    new_batches: int
    days: int
    duration_s: float | None
    message: str
    path: Path


def read_records(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Every run record, oldest first (unreadable files are reported, not skipped)."""
    folder = runs_dir(data_dir)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)):
        try:
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"run record {path} is unreadable: {exc}") from exc
        record["_path"] = str(path)
        yield record


def summaries(data_dir: Path) -> list[RunSummary]:
    out = []
    for r in read_records(data_dir):
        out.append(
            RunSummary(
                run_id=str(r.get("run_id")),
                started_at=str(r.get("started_at", "")),
                status=str(r.get("status", "?")),
                engine=str(r.get("engine", "?")),
                mode=str(r.get("plan", {}).get("mode", "?")),
                new_batches=len(r.get("inputs", {}).get("new_batches", [])),
                days=len(r.get("plan", {}).get("days", [])),
                duration_s=r.get("duration_s"),
                message=str(r.get("message", "")),
                path=Path(r["_path"]),
            )
        )
    return sorted(out, key=lambda s: (s.started_at, s.run_id))
