"""Run an existing security test module in a child pytest and count its cases (S1, S2)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tests.faults.figures_support import ENV_OUT, ROOT


@dataclass(frozen=True)
class Matrix:
    total: int
    passed: int
    failed: list[str]
    skipped: int
    output: str


def run_matrix(module: str, junit: Path) -> Matrix:
    """``pytest MODULE`` in a child process; its cases as counted by its JUnit report."""
    env = {k: v for k, v in os.environ.items() if k != ENV_OUT}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", module, "-q", "-p", "no:cacheprovider",
         f"--junitxml={junit}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    cases = ET.parse(junit).getroot().iter("testcase")
    total = passed = skipped = 0
    failed: list[str] = []
    for case in cases:
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(case.get("name", "?"))
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return Matrix(total, passed, failed, skipped, res.stdout[-3000:] + res.stderr[-2000:])
