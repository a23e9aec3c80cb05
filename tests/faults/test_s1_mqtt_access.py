"""S1: the deployment broker's TLS / password / ACL matrix (tests/test_deploy_mosquitto.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.figures_support import Figure, full_scale
from tests.faults.security_support import run_matrix

MODULE = "tests/test_deploy_mosquitto.py"


@pytest.mark.skipif(not full_scale(), reason=f"make test runs {MODULE} itself")
def test_mqtt_access_matrix(tmp_path: Path, figure: Figure) -> None:
    m = run_matrix(MODULE, tmp_path / "junit.xml")
    figure(f"{m.passed} of {m.total} access cases hold ({MODULE}), {len(m.failed)} fail,"
           f" {m.skipped} skipped")  # fmt: skip
    assert m.total > 0 and not m.failed and not m.skipped, m.output
