"""The report rendered by headless Chromium, as a person opens it: not blank, plots drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from central.report import build_report, write_report
from tests.report_support import (
    chromium,
    fleet_rows,
    gold_tables,
    screenshot,
    write_gold,
    write_run_record,
)

pytestmark = pytest.mark.skipif(
    chromium() is None,
    reason="no chromium binary: install the Debian package `chromium` (.ci/run does)",
)

RED = np.array([214, 39, 40]) / 255  # bars below target (plots.WORST_COLOR)
GREEN = np.array([44, 160, 44]) / 255  # bars at target


def near(img: np.ndarray, color: np.ndarray, tol: float = 0.04) -> np.ndarray:
    return np.all(np.abs(img[..., :3] - color) <= tol, axis=-1)


def test_screenshot_is_not_blank_and_shows_the_plots(tmp_path: Path) -> None:
    write_gold(tmp_path / "gold", gold_tables(fleet_rows()))
    write_run_record(tmp_path / "runs", "run-0001", ["gw-north-000001"])
    html = tmp_path / "report.html"
    write_report(html, build_report(tmp_path / "gold", tmp_path / "runs"))
    png = tmp_path / "report.png"
    screenshot(html, png, tmp_path / "profile", (1400, 2400))

    img = imread(png)
    assert img.shape[:2] == (2400, 1400)
    rgb = img[..., :3]
    # not blank: many colors, real contrast
    colors = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colors) > 100, len(colors)
    assert rgb.std() > 0.05
    # the header has dark text on the light page
    header = rgb[0:90, 0:700]
    assert (header.mean(axis=-1) < 0.3).sum() > 500

    # The first plot (fleet uptime by day) sits in the left column: its bars are red and
    # green. Crop around the red bars there and check a real chart is drawn: bars of both
    # colors, white background, dark axis and label text.
    left = rgb[:, :700]
    ys, xs = np.nonzero(near(left, RED))
    assert len(ys) > 2000, "no red bars in the left column"
    top, bottom = max(0, ys.min() - 80), min(2400, ys.max() + 40)
    crop = left[top:bottom, max(0, xs.min() - 300) : 700]
    assert near(crop, GREEN).sum() > 1000, "no green bar next to the red ones"
    assert near(crop, np.ones(3), 0.02).mean() > 0.3, "no white plot background"
    assert (crop.mean(axis=-1) < 0.25).sum() > 200, "no axis or label text"
    # the tiles above the plots show the day figures in red and green
    assert near(rgb[:top], np.array([179, 38, 30]) / 255, 0.05).sum() > 100
