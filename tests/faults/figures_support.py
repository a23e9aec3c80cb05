"""Scale knob of the fault suite and the RELIABILITY.md table its scenarios fill.

``FLEETPULSE_FAULTS=full`` (what ``make faults`` sets) runs every scenario at the issue's
figures and writes RELIABILITY.md; anything else runs the reduced set that ``make test``
can afford and writes nothing, unless ``FLEETPULSE_RELIABILITY_OUT=PATH`` asks for a table.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV_SCALE = "FLEETPULSE_FAULTS"
ENV_OUT = "FLEETPULSE_RELIABILITY_OUT"
# The ``figure`` fixture: adds one counted figure to the test's scenario row.
Figure = Callable[[str], None]

# Every scenario of issue 8, in the order of the table: a scenario the run did not reach
# still gets its row ("not run"), so a partial table never looks complete.
SCENARIOS: dict[str, str] = {
    "R1": "crashes (SIGKILL + fault points)",
    "R2": "power cuts of the SQLite buffer",
    "R3": "broker restarts (SIGKILL / SIGTERM)",
    "R4": "partition agent ↔ central",
    "R5": "central refusing (503 / 429 + Retry-After)",
    "R6": "lost responses after commit",
    "R7": "disk full",
    "R8": "clock jumps ±24 h",
    "B1": "bad payloads (hypothesis)",
    "B2": "fuzzing (schemathesis, decoder, batch validator)",
    "S1": "MQTT access matrix (TLS, passwords, ACL)",
    "S2": "hostile-upload matrix (ingest API)",
}


def full_scale(environ: dict[str, str] | None = None) -> bool:
    """True when the run asks for the issue's full figures (``FLEETPULSE_FAULTS=full``)."""
    value = (os.environ if environ is None else environ).get(ENV_SCALE, "reduced").strip()
    if value not in ("full", "reduced", ""):
        raise ValueError(f"{ENV_SCALE}={value!r}: use 'full' (make faults) or 'reduced'")
    return value == "full"


def pick(reduced: int, full: int) -> int:
    """The reduced or the full figure of a knob, by the run's scale."""
    return full if full_scale() else reduced


def output_path(environ: dict[str, str] | None = None) -> Path | None:
    """Where this run writes its table: asked-for path, RELIABILITY.md when full, or none."""
    env = os.environ if environ is None else environ
    if env.get(ENV_OUT):
        return Path(env[ENV_OUT])
    return ROOT / "RELIABILITY.md" if full_scale(dict(env)) else None


@dataclass
class Row:
    """One scenario's line: the measured figure and the verdict of its tests."""

    scenario: str
    figure: str = ""
    outcomes: list[str] = field(default_factory=list)  # "passed" / "failed" / "skipped: why"

    @property
    def verdict(self) -> str:
        if any(o == "failed" for o in self.outcomes):
            return "FAIL"
        if any(o == "passed" for o in self.outcomes):
            skipped = [o for o in self.outcomes if o.startswith("skipped")]
            return "pass (partial)" if skipped else "pass"
        return "not run"


def previous_lines(text: str) -> dict[str, str]:
    """The table lines of an earlier RELIABILITY.md, by scenario (for rows not re-run)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and cells[1].strip() in SCENARIOS and "not run" not in cells[-3]:
            found[cells[1].strip()] = line
    return found


def render(rows: dict[str, Row], when: dt.datetime, scale: str, previous: str = "") -> str:
    """RELIABILITY.md: one row per scenario, figure, pass/fail and the date it was measured.

    A scenario this run did not reach keeps its earlier line (with that run's date), so
    ``make faults PYTEST_ARGS="-k r6"`` refreshes one row without blanking the others.
    """
    stamp = when.strftime("%Y-%m-%d %H:%M UTC")
    earlier = previous_lines(previous)
    out = [
        "# RELIABILITY",
        "",
        f"Written by `make faults` (tests/faults, scale: {scale}), last on {stamp}. Each",
        "figure is counted by the scenario's test, never typed in; a row's date is the run",
        "that measured it. docs/reliability.md says what each scenario does and simulates.",
        "",
        "| scenario | what | figure | result | date |",
        "|---|---|---|---|---|",
    ]
    for key, what in SCENARIOS.items():
        if key not in rows and key in earlier:
            out.append(earlier[key])
            continue
        row = rows.get(key, Row(key))
        figure = row.figure or "; ".join(o for o in row.outcomes if o.startswith("skipped"))
        figure = figure or "not run in this run"
        cell = figure.replace("|", "\\|").replace("\n", " ")
        out.append(f"| {key} | {what} | {cell} | {row.verdict} | {when:%Y-%m-%d} |")
    return "\n".join(out) + "\n"
