"""A small, valid DAG: readings -> per-device counts -> fleet total, with a side branch."""

from __future__ import annotations

from typing import Any

from pipeline import gate, step


def _helper(x: int) -> int:  # private: not a step
    return x


def readings(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Readings with a known device."""
    return [r for r in raw if r.get("device_id")]


def per_device(readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Number of readings per device."""
    counts: dict[str, int] = {}
    for r in readings:
        counts[r["device_id"]] = counts.get(r["device_id"], 0) + 1
    return [{"device_id": d, "n": n} for d, n in sorted(counts.items())]


def total(per_device: list[dict[str, Any]]) -> int:
    """All readings."""
    return sum(r["n"] for r in per_device)


@step(name="sites")
def site_list(raw: list[dict[str, Any]], prefix: str = "site-") -> list[str]:
    """Distinct sites, an independent branch with an optional input."""
    return sorted({prefix + str(r.get("site")) for r in raw})


@gate("per_device", reason="count must be positive")
def counts_positive(per_device: list[dict[str, Any]]) -> list[bool]:
    return [r["n"] > 0 for r in per_device]
