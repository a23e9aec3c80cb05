"""The interim ``fleetpulse demo`` runs end to end and shows what the agent stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.agent_support import ROOT


def test_demo_runs_and_reports_dedup_and_quarantine(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "demo", "--out", str(tmp_path / "demo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "readings_total: 10" in out.stdout
    assert "quarantined_total: 2" in out.stdout
    assert "exit code 0" in out.stdout
    assert "full demo" in out.stdout and "later issue" in out.stdout
