"""Shared fixtures: a private Mosquitto per test, free ports, temp data dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto with persistence on a free port; tests may kill and restart it."""
    b = Broker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.kill()
