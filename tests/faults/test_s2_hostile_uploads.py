"""S2: the ingest API's hostile-upload matrix (tests/test_central_api.py) on a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.figures_support import Figure, full_scale
from tests.faults.security_support import run_matrix

MODULE = "tests/test_central_api.py"


@pytest.mark.skipif(not full_scale(), reason=f"make test runs {MODULE} itself")
def test_hostile_upload_matrix(tmp_path: Path, figure: Figure) -> None:
    m = run_matrix(MODULE, tmp_path / "junit.xml")
    figure(f"{m.passed} of {m.total} hostile-upload cases refused as specified ({MODULE}),"
           f" {len(m.failed)} fail, {m.skipped} skipped")  # fmt: skip
    assert m.total > 0 and not m.failed and not m.skipped, m.output
