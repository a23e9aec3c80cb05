"""A DAG with a typo: ``kpis`` asks for ``registy`` (no such step), so its input is missing."""

from __future__ import annotations


def registry(path: str) -> dict[str, int]:
    """The device registry."""
    return {"d1": 30}


def kpis(readings: list[int], registy: dict[str, int]) -> int:
    """Misspelled input: should be ``registry``."""
    return len(readings) + len(registy)
