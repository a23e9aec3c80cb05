"""Assemble the report: gold tables and run record in, one HTML file out."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, date, datetime
from pathlib import Path

from . import plots as P
from .data import Gold, RunInfo, latest_run, load_gold
from .errors import ReportWriteError
from .html import Meta, Plot, render
from .lineage import failure_of, history_row, lineage
from .summary import DEFAULT_TARGET, UNKNOWN_FIRMWARE, Summary, firmware_series, pct, summarize

log = logging.getLogger(__name__)


def make_plots(gold: Gold, s: Summary) -> list[Plot]:
    """Every plot of the report, in page order, with a caption that states what it shows."""
    worst = s.firmware_verdict.worst.key if s.firmware_verdict else None
    versions = {g.key for g in s.firmware} | {
        v or UNKNOWN_FIRMWARE for v in gold.device_day["firmware_version"].to_pylist()
    }
    colors = P.firmware_colors(sorted(versions), worst)
    series = firmware_series(gold.firmware_day, s, P.MAX_SERIES)
    dd = gold.device_day
    n_dd = dd.num_rows
    sampled = "" if n_dd <= P.MAX_POINTS else f" ({P.MAX_POINTS:,} of {n_dd:,}, fixed-seed sample)"
    r = s.alert_down_correlation
    placed = [c for c in s.cells if c.key != "no location" and c.uptime is not None]
    unplaced = next((c for c in s.cells if c.key == "no location"), None)
    sites_shown = min(len(s.sites), P.MAX_BARS)
    return [
        Plot(
            "Fleet uptime by day",
            f"Time-weighted over all devices; red days are below the {pct(s.target)} target.",
            P.fleet_uptime_by_day(s.days, s.target),
        ),
        Plot(
            "Uptime by firmware version over time",
            "Each version's uptime on the days it ran (time attributed to the version running "
            "at that moment)." + (f" {worst} is drawn in red." if worst else ""),
            P.firmware_over_time(series, colors, s.target),
        ),
        Plot(
            "Uptime by site",
            f"Over the whole period; {sites_shown} of {len(s.sites)} sites, worst at the top.",
            P.uptime_by_site(s.sites, s.target),
        ),
        Plot(
            "Geohash grid heat map",
            f"{len(placed)} geohash-5 cells at their lat/lon boxes, shaded by uptime."
            + (
                f" {unplaced.device_days} device-days without a location are not drawn."
                if unplaced
                else ""
            ),
            P.geohash_heatmap(s.cells, s.target),
        ),
        Plot(
            "Top devices by downtime",
            f"The {len(s.top_devices)} devices with the most downtime, colored by the firmware "
            "of their latest day.",
            P.top_devices_by_downtime(s.top_devices, colors),
        ),
        Plot(
            "Alerts against downtime",
            f"One point per device-day{sampled}"
            + (f"; Pearson r = {r:.2f}." if r is not None else "."),
            P.alerts_vs_downtime(dd, colors),
        ),
        Plot(
            "Connectivity against uptime",
            f"One point per device-day{sampled}; the shaded band is at or above target: points "
            "there far left are up but poorly heard (lossy links).",
            P.connectivity_vs_uptime(dd, colors, s.target),
        ),
    ]


def build_report(
    gold_dir: Path,
    runs_dir: Path,
    *,
    since: date | None = None,
    until: date | None = None,
    now: datetime | None = None,
    default_target: float = DEFAULT_TARGET,
) -> str:
    """The HTML of the report on the gold tables under ``gold_dir``; ``default_target`` is
    used only when the tables do not carry the target consolidation applied."""
    gold = load_gold(gold_dir, since, until)
    s = summarize(gold, default_target=default_target)
    run: RunInfo | None = latest_run(runs_dir)
    meta = Meta(
        generated_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        gold_dir=str(gold_dir),
        versions=gold.versions,
        run_path=str(run.path) if run and run.path else None,
        newer_failed=[
            f"{r.get('run_id', '?')} ({r.get('started_at', '?')}): {failure_of(r)}"
            for r in (run.newer_failed if run else [])
        ],
        history=[history_row(r) for r in (run.recent if run else [])],
    )
    lin = lineage(run.record) if run and run.record is not None else None
    return render(s, make_plots(gold, s), lin, meta)


def write_report(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp, fsync, rename): never a half report."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        # Not mkstemp: its 0600 would leave a report nobody else can open; this honours umask.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ReportWriteError(
            f"cannot write the report to {path}: {exc.strerror or exc}; pass a writable --out"
        ) from exc
    log.debug("wrote report %s (%d bytes)", path, len(text.encode()))
