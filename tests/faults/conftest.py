"""Fault-suite plumbing: each test's figure and outcome go to its scenario's RELIABILITY.md row.

A test module ``test_<scenario>_*.py`` (``test_r2_power_cuts.py`` → R2) belongs to that
scenario. Tests report what they counted through the ``figure`` fixture *before* asserting,
so a failing scenario still shows its numbers. At the end of the session the table is
written when the run is full scale or ``FLEETPULSE_RELIABILITY_OUT`` names a file.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Generator, Iterator

import pytest

from tests.faults.figures_support import SCENARIOS, Row, full_scale, output_path, render

log = logging.getLogger(__name__)

_ROWS: dict[str, Row] = {}
_MODULE_RE = re.compile(r"test_([a-z]\d)_")


def scenario_of(item: pytest.Item) -> str | None:
    match = _MODULE_RE.match(item.path.name)
    key = match.group(1).upper() if match else None
    return key if key in SCENARIOS else None


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Iterator[Callable[[str], None]]:
    """``figure("0 of 12,345 acked rows lost in 200 cuts")`` adds to this scenario's row."""
    key = scenario_of(request.node)
    assert key is not None, f"{request.node.path.name} is not named test_<scenario>_*.py"
    row = _ROWS.setdefault(key, Row(key))

    def add(text: str) -> None:
        row.figure = f"{row.figure}; {text}" if row.figure else text

    yield add


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    key = scenario_of(item)
    if key is None:
        return report
    row = _ROWS.setdefault(key, Row(key))
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        row.outcomes.append(f"skipped: {str(reason).removeprefix('Skipped: ')}")
    elif report.failed:
        row.outcomes.append("failed")
    elif report.when == "call" and report.passed:
        row.outcomes.append("passed")
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = output_path()
    if path is None or not _ROWS:
        return
    scale = "full" if full_scale() else "reduced"
    previous = path.read_text() if path.exists() else ""
    path.write_text(render(_ROWS, dt.datetime.now(dt.UTC), scale, previous))
    log.warning("fault suite: wrote %s", path)
