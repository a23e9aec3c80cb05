"""A DAG with a cycle: a needs c, b needs a, c needs b."""

from __future__ import annotations


def a(c: int) -> int:
    """Loops back through c."""
    return c + 1


def b(a: int) -> int:
    """Needs a."""
    return a + 1


def c(b: int) -> int:
    """Needs b, closing the loop."""
    return b + 1


def unrelated(seed: int) -> int:
    """Not part of the loop."""
    return seed
