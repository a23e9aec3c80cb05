"""The report's plots: one function per plot, each returning an inline SVG string.

Figures are built with the object API on an Agg canvas (no pyplot, so no global state and
no display), saved as SVG with text kept as text (searchable, small) and a fixed hash salt
(the same tables give the same bytes).
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any, ParamSpec

import matplotlib as mpl
import matplotlib.dates as mdates
import numpy as np
import pyarrow as pa
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator, MultipleLocator, PercentFormatter

from .geohash import decode_box
from .summary import NO_LOCATION, UNKNOWN_FIRMWARE, Day, DeviceDown, Group, pct, pct_vs

WIDTH, HEIGHT = 6.4, 3.5  # inches: two plots side by side fill a 1400 px wide page
# Scatter plots draw at most this many device-days (a fixed-seed sample): an SVG point is an
# element, and a year of a large fleet would make the file too heavy to open.
MAX_POINTS = 4000
MAX_BARS = 20
MAX_SERIES = 8
WORST_COLOR = "#d62728"
PALETTE = [
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#17becf",
    "#bcbd22",
    "#e377c2",
    "#ff7f0e",
    "#7f7f7f",
    "#aec7e8",
    "#98df8a",
    "#c5b0d5",
]
RC: Any = {
    "svg.fonttype": "none",
    "svg.hashsalt": "fleetpulse-report",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same metrics everywhere
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
}

P = ParamSpec("P")
_SVG_HEAD = re.compile(r"^.*?(?=<svg)", re.S)
_SVG_SIZE = re.compile(r'<svg([^>]*?) width="[^"]*" height="[^"]*"')
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')


def styled(fn: Callable[P, str]) -> Callable[P, str]:
    """Build the plot inside the report's style (rc settings apply when artists are made)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> str:
        with mpl.rc_context(RC):
            return fn(*args, **kwargs)

    return run


def _figure(height: float = HEIGHT) -> Figure:
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_svg(fig: Figure, label: str) -> str:
    """The figure as an ``<svg>`` element for inline HTML: no XML prolog, no DOCTYPE, no
    namespace URLs (the HTML parser puts inline SVG in its namespace), scaling to its box."""
    buf = io.StringIO()
    with mpl.rc_context(RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = _SVG_HEAD.sub("", buf.getvalue(), count=1)
    text = _XMLNS.sub("", text)
    text = _SVG_SIZE.sub(
        rf'<svg\1 role="img" aria-label="{label}" preserveAspectRatio="xMidYMid meet"',
        text,
        count=1,
    )
    # matplotlib writes an RDF metadata block whose vocabularies are URLs; it says nothing here
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    # Seven SVGs share one page, and matplotlib numbers its ids from 1 in each (axes_1, …):
    # prefix them so every id, and every reference to one, is unique in the document.
    prefix = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    return text.strip()


def firmware_colors(versions: Sequence[str], worst: str | None) -> dict[str, str]:
    """One color per firmware version, the same in every plot; the worst one red."""
    colors: dict[str, str] = {}
    others = [v for v in sorted(versions) if v != worst]
    for i, v in enumerate(others):
        colors[v] = PALETTE[i % len(PALETTE)]
    if worst is not None:
        colors[worst] = WORST_COLOR
    return colors


def _pct_axis(ax: Axes, values: Sequence[float], target: float | None) -> None:
    lo = min([*values, *([target] if target is not None else [])], default=0.9)
    lo = max(0.0, math.floor((lo - 0.01) * 50) / 50)  # a 2-point step below the lowest value
    ax.set_ylim(lo, 1.005)
    _pct_ticks(ax.yaxis, lo)


def _pct_ticks(axis: Any, lo: float) -> None:
    # Whole-point ticks when the range allows it: 2.5 % steps read as 92 %, 95 %, 98 %.
    span = 1.0 - lo
    step = next((s for s in (0.01, 0.02, 0.05, 0.1, 0.2) if span / s <= 10), 0.25)
    axis.set_major_locator(MultipleLocator(step))
    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _target_line(ax: Axes, target: float, horizontal: bool = True) -> None:
    # Labelled on the line itself: a legend entry would compete with the data's legend.
    text = f"target {target * 100:g}%"
    style: dict[str, Any] = {"color": "#555555", "linestyle": "--", "linewidth": 1.0, "zorder": 2.5}
    if horizontal:
        ax.axhline(target, **style)
        ax.annotate(
            text,
            xy=(1.0, target),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=7.5,
            color="#555555",
        )
    else:
        ax.axvline(target, **style)
        ax.annotate(
            text,
            xy=(target, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3, -2),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=7.5,
            color="#555555",
        )


def _nums(days: Sequence[date]) -> list[float]:
    # Days as matplotlib's float dates: typed axes take numbers, not date objects.
    return [float(x) for x in mdates.date2num(list(days))]


def _day_axis(ax: Axes, days: Sequence[date]) -> None:
    ticks = list(days)
    if len(ticks) > 10:
        step = math.ceil(len(ticks) / 10)
        ticks = ticks[::step]
    ax.set_xticks(_nums(ticks), [d.strftime("%b %d") for d in ticks])


@styled
def fleet_uptime_by_day(days: Sequence[Day], target: float) -> str:
    """Bars of the fleet's time-weighted uptime per day, the target as a dashed line."""
    fig = _figure()
    ax = fig.add_subplot()
    shown = [d for d in days if d.uptime is not None]
    values = [d.uptime for d in shown if d.uptime is not None]
    colors = [WORST_COLOR if v < target else "#2ca02c" for v in values]
    days_shown = [d.day for d in shown]
    xs = _nums(days_shown)
    ax.bar(xs, values, width=0.7, color=colors, zorder=2)
    _target_line(ax, target)
    _pct_axis(ax, values, target)
    _day_axis(ax, days_shown)
    if len(xs) <= 14:
        for x, v in zip(xs, values, strict=True):
            ax.annotate(
                pct_vs(v, target),
                (x, v),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
            )
    ax.set_ylabel("fleet uptime (Σup / Σ(up+down))")
    return to_svg(fig, "fleet uptime by day")


@styled
def firmware_over_time(
    series: Mapping[str, Sequence[tuple[date, float | None]]],
    colors: Mapping[str, str],
    target: float,
) -> str:
    """One line per firmware version: its time-weighted uptime on each day it ran."""
    fig = _figure()
    ax = fig.add_subplot()
    values: list[float] = []
    all_days: set[date] = set()
    for version, points in series.items():
        pts = [(d, u) for d, u in points if u is not None]
        if not pts:
            continue
        values.extend(u for _, u in pts)
        all_days.update(d for d, _ in pts)
        ax.plot(
            _nums([d for d, _ in pts]),
            [u for _, u in pts],
            marker="o",
            markersize=4,
            linewidth=1.8,
            color=colors.get(version, "#7f7f7f"),
            label=version,
            zorder=3,
        )
    _target_line(ax, target)
    _pct_axis(ax, values, target)
    _day_axis(ax, sorted(all_days))
    ax.set_ylabel("uptime on that version")
    fig.legend(loc="outside lower center", ncols=min(5, max(1, len(series))))
    return to_svg(fig, "uptime by firmware version over time")


@styled
def uptime_by_site(sites: Sequence[Group], target: float) -> str:
    """Horizontal bars of each site's uptime over the period, worst at the top."""
    shown = [g for g in sites if g.uptime is not None][:MAX_BARS]
    fig = _figure(max(HEIGHT, 0.9 + 0.28 * len(shown)))
    ax = fig.add_subplot()
    labels = [g.key for g in shown][::-1]
    values = [g.uptime for g in shown if g.uptime is not None][::-1]
    colors = [WORST_COLOR if v < target else "#2ca02c" for v in values]
    ax.barh(labels, values, color=colors, height=0.65, zorder=2)
    lo = max(0.0, math.floor((min([*values, target]) - 0.01) * 50) / 50)
    ax.set_xlim(lo, 1.0)
    _pct_ticks(ax.xaxis, lo)
    for y, v in enumerate(values):
        ax.annotate(
            pct_vs(v, target),
            (v, y),
            textcoords="offset points",
            xytext=(-3, 0),
            ha="right",
            va="center",
            fontsize=8,
            color="white",
            fontweight="bold",
        )
    _target_line(ax, target, horizontal=False)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("uptime over the period")
    return to_svg(fig, "uptime by site")


@styled
def geohash_heatmap(cells: Sequence[Group], target: float) -> str:
    """Geohash-5 cells drawn as their lat/lon boxes, shaded by uptime (red low, green high)."""
    fig = _figure(4.0)
    ax = fig.add_subplot()
    placed = [
        (g, decode_box(g.key)) for g in cells if g.key != NO_LOCATION and g.uptime is not None
    ]
    values = [g.uptime or 0.0 for g, _ in placed]
    vmin = min([*values, target - 0.02])
    lowest = max(0.0, math.floor(vmin * 50) / 50)
    norm = Normalize(vmin=lowest, vmax=1.0)
    cmap = mpl.colormaps["RdYlGn"]
    for (_, b), v in zip(placed, values, strict=True):
        ax.add_patch(
            Rectangle(
                (b.lon_min, b.lat_min),
                b.lon_max - b.lon_min,
                b.lat_max - b.lat_min,
                facecolor=cmap(norm(v)),
                edgecolor="#333333",
                linewidth=0.5,
                zorder=3,
            )
        )
    if placed:
        boxes = [b for _, b in placed]
        lat0, lat1 = min(b.lat_min for b in boxes), max(b.lat_max for b in boxes)
        lon0, lon1 = min(b.lon_min for b in boxes), max(b.lon_max for b in boxes)
        pad = max(lat1 - lat0, lon1 - lon0, 0.2) * 0.12
        # Limits as data extent, not fixed: the aspect below may then widen them.
        ax.margins(0)
        ax.update_datalim([(lon0 - pad, lat0 - pad), (lon1 + pad, lat1 + pad)])
        ax.autoscale_view()
        # Degrees of longitude shrink with latitude: keep cells square on screen, and let the
        # map widen to fill the plot rather than leave it half empty.
        ax.set_aspect(1 / max(math.cos(math.radians((lat0 + lat1) / 2)), 0.1), adjustable="datalim")
        # A 5 km cell is a speck on a country-wide map: mark each one with a small square of
        # its color too, worst drawn last so a bad cell is never hidden by a good neighbour.
        cell_w = boxes[0].lon_max - boxes[0].lon_min
        if cell_w < 0.03 * (lon1 - lon0 + 2 * pad):
            order = sorted(range(len(placed)), key=lambda i: -values[i])
            ax.scatter(
                [boxes[i].center[1] for i in order],
                [boxes[i].center[0] for i in order],
                c=[values[i] for i in order],
                cmap=cmap,
                norm=norm,
                s=42,
                marker="s",
                edgecolors="#333333",
                linewidths=0.4,
                zorder=4,
            )
        # Name only the worst few cells, each label pushed a different way so they don't pile.
        offsets = [(12, 12), (12, -18), (-12, 14)]
        worst = sorted(placed, key=lambda gb: (gb[0].uptime or 0.0, gb[0].key))[:3]
        for (g, b), (dx, dy) in zip(worst, offsets, strict=False):
            lat, lon = b.center
            ax.annotate(
                f"{g.key} {pct(g.uptime)}",
                (lon, lat),
                textcoords="offset points",
                xytext=(dx, dy),
                ha="left" if dx > 0 else "right",
                fontsize=7.5,
                zorder=5,
                arrowprops={"arrowstyle": "-", "color": "#333333", "linewidth": 0.6},
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#bbbbbb", "lw": 0.5},
            )
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.85)
    _pct_ticks(bar.ax.yaxis, lowest)
    bar.set_label("uptime")
    return to_svg(fig, "geohash grid heat map")


@styled
def top_devices_by_downtime(devices: Sequence[DeviceDown], colors: Mapping[str, str]) -> str:
    """Horizontal bars of the devices with the most downtime, colored by firmware."""
    fig = _figure(max(HEIGHT, 0.9 + 0.26 * len(devices)))
    ax = fig.add_subplot()
    shown = list(devices)[::-1]
    labels = [f"{d.device_id} ({d.site})" for d in shown]
    ax.barh(
        labels,
        [d.down_s / 3600 for d in shown],
        height=0.65,
        zorder=2,
        color=[colors.get(d.firmware_version, "#7f7f7f") for d in shown],
    )
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("downtime over the period (hours)")
    versions = sorted({d.firmware_version for d in shown})
    ax.legend(
        handles=[Patch(color=colors.get(v, "#7f7f7f"), label=v) for v in versions],
        title="firmware (latest day)",
        loc="lower right",
        title_fontsize=8,
    )
    return to_svg(fig, "top devices by downtime")


def sample(table: pa.Table, n: int = MAX_POINTS, seed: int = 0) -> pa.Table:
    """At most ``n`` rows, chosen with a fixed seed (the same tables give the same plot)."""
    if table.num_rows <= n:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False))
    return table.take(pa.array(idx))


def _by_firmware_scatter(
    ax: Axes,
    rows: list[dict[str, Any]],
    x: str,
    y: str,
    colors: Mapping[str, str],
    jitter: float,
    scale: float,
) -> None:
    rng = np.random.default_rng(1)
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        fw = r["firmware_version"] or UNKNOWN_FIRMWARE
        groups.setdefault(fw, []).append((r[x], r[y] * scale))
    # The worst (red) version last, so its points sit on top.
    for fw in sorted(groups, key=lambda v: (colors.get(v) == WORST_COLOR, v)):
        pts = np.array(groups[fw], dtype=float)
        xs = pts[:, 0] + (rng.uniform(-jitter, jitter, len(pts)) if jitter else 0.0)
        ax.scatter(
            xs,
            pts[:, 1],
            s=14,
            alpha=0.65,
            color=colors.get(fw, "#7f7f7f"),
            edgecolors="none",
            label=fw,
            zorder=3,
        )


@styled
def alerts_vs_downtime(device_day: pa.Table, colors: Mapping[str, str]) -> str:
    """One point per device-day: alerts open that day against its downtime."""
    fig = _figure()
    ax = fig.add_subplot()
    rows = sample(device_day.select(["alert_count", "down_s", "firmware_version"])).to_pylist()
    rows = [r for r in rows if r["alert_count"] is not None and r["down_s"] is not None]
    _by_firmware_scatter(ax, rows, "alert_count", "down_s", colors, jitter=0.18, scale=1 / 3600)
    ax.set_xlabel("alerts that day (jittered)")
    ax.set_ylabel("downtime that day (hours)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="firmware", loc="upper left", title_fontsize=8, markerscale=1.5)
    return to_svg(fig, "alerts against downtime")


@styled
def connectivity_vs_uptime(device_day: pa.Table, colors: Mapping[str, str], target: float) -> str:
    """One point per device-day: connectivity ratio against uptime; lossy links sit up-left."""
    fig = _figure()
    ax = fig.add_subplot()
    cols = ["connectivity_ratio", "device_uptime", "firmware_version"]
    rows = sample(device_day.select(cols)).to_pylist()
    rows = [
        r for r in rows if r["connectivity_ratio"] is not None and r["device_uptime"] is not None
    ]
    ax.axhspan(target, 1.005, xmin=0, xmax=1, color="#fff3cd", zorder=1)
    _by_firmware_scatter(ax, rows, "connectivity_ratio", "device_uptime", colors, 0.0, 1.0)
    _target_line(ax, target)
    ax.set_xlim(max(0.0, min([r["connectivity_ratio"] for r in rows], default=0.8) - 0.02), 1.01)
    _pct_axis(ax, [r["device_uptime"] for r in rows], target)
    _pct_ticks(ax.xaxis, ax.get_xlim()[0])
    ax.set_xlabel("connectivity ratio (heartbeat slots heard)")
    ax.set_ylabel("device uptime")
    ax.legend(title="firmware", loc="lower left", title_fontsize=8, markerscale=1.5)
    return to_svg(fig, "connectivity against uptime")


__all__ = [
    "alerts_vs_downtime",
    "connectivity_vs_uptime",
    "firmware_colors",
    "firmware_over_time",
    "fleet_uptime_by_day",
    "geohash_heatmap",
    "sample",
    "top_devices_by_downtime",
    "uptime_by_site",
]
