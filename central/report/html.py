"""The report as one self-contained HTML page: inline CSS and SVG, no script, no URL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from .data import TableVersion
from .lineage import Lineage
from .summary import Summary, hours, notable, pct, pct_vs

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d2330;font:14px/1.45 "DejaVu Sans","Liberation Sans",
Arial,sans-serif}
main{max-width:1360px;margin:0 auto;padding:20px 24px 40px}
header h1{margin:0 0 2px;font-size:24px}
.meta{color:#5b6372;margin:0 0 16px;font-size:13px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:16px 20px;
margin:0 0 18px}
h2{font-size:18px;margin:0 0 10px}
h3{font-size:15px;margin:14px 0 6px}
.headline{font-size:17px;margin:0 0 12px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 12px}
.tile{border:1px solid #dde1e7;border-radius:6px;padding:8px 12px;min-width:128px}
.tile .v{font-size:22px;font-weight:bold}
.tile .d{color:#5b6372;font-size:12px}
.bad{color:#b3261e}.good{color:#1e7b34}
.tile.bad{border-color:#f1b0ab;background:#fdf0ef}.tile.good{border-color:#b6dfc0;background:#f0f9f2}
ul.facts,ol.next{margin:4px 0 0;padding-left:22px}
ul.facts li,ol.next li{margin:3px 0}
.grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:18px}
figure{margin:0;background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 14px}
figure h3{margin:0 0 2px}
figure p{margin:0 0 6px;color:#5b6372;font-size:12.5px}
figure svg{display:block;width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:13px;margin:4px 0 8px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f7f8fa;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.tables{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:18px}
.tables section{margin:0}
.ok{color:#1e7b34;font-weight:600}.failed{color:#b3261e;font-weight:600}
.note{color:#5b6372;font-size:12.5px}
footer{color:#5b6372;font-size:12.5px}
@media (max-width:900px){.grid,.tables{grid-template-columns:1fr}}
"""


@dataclass(frozen=True)
class Plot:
    """One figure of the report."""

    title: str
    caption: str
    svg: str


@dataclass(frozen=True)
class Meta:
    """Where the report's data came from and when it was made."""

    generated_at: str
    gold_dir: str
    versions: Sequence[TableVersion]
    run_path: str | None
    newer_failed: Sequence[str]
    history: Sequence[Sequence[object]] = ()


def e(value: object) -> str:
    return escape(str(value), quote=True)


def _day(d: object) -> str:
    return d.strftime("%b %d, %Y") if hasattr(d, "strftime") else str(d)


def _cls(value: float | None, target: float) -> str:
    return "" if value is None else ("good" if value >= target else "bad")


def headline(s: Summary) -> str:
    """The one sentence at the top: the fleet over the period, its worst and its last day."""
    known = [d for d in s.days if d.uptime is not None]
    overall = s.total.uptime
    text = f"Fleet uptime {pct(overall)} from {_day(s.first_day)} to {_day(s.last_day)}"
    if known:
        worst = min(known, key=lambda d: (d.uptime or 0.0, d.day))
        last = known[-1]
        text += f"; lowest {pct(worst.uptime)} on {_day(worst.day)}"
        if last.day != worst.day:
            text += f", last day {pct(last.uptime)}"
    text += f" (target {pct(s.target)})."
    return text


def _tiles(s: Summary, limit: int = 14) -> str:
    out = []
    for d in s.days[-limit:]:
        meeting = ""
        if d.meeting_target is not None and d.with_uptime:
            meeting = f" · {d.meeting_target}/{d.with_uptime} at target"
        out.append(
            f'<div class="tile {_cls(d.uptime, s.target)}"><div class="d">{e(_day(d.day))}</div>'
            f'<div class="v">{e(pct_vs(d.uptime, s.target))}</div>'
            f'<div class="d">{d.devices} devices{e(meeting)}</div></div>'
        )
    return '<div class="tiles">' + "".join(out) + "</div>"


def facts(s: Summary) -> list[str]:
    """The short 'why' list: worst firmware against the rest, worst sites, alerts, cells."""
    out = []
    v = s.firmware_verdict
    if v is not None:
        rest = f" against {pct(v.rest.uptime)} on all other versions" if v.rest else ""
        out.append(
            f"Worst firmware: {v.worst.key} at {pct(v.worst.uptime)}{rest}; "
            f"{pct(v.down_share, 0)} of all downtime on {pct(v.time_share, 0)} of device-time."
            + ("" if notable(v) else " (No version stands out.)")
        )
    if s.worst_sites:
        parts = []
        for sv in s.worst_sites:
            part = f"{sv.site.key} {pct(sv.site.uptime)}"
            if sv.without_worst_firmware is not None and v is not None:
                part += f" ({pct(sv.without_worst_firmware)} without {v.worst.key})"
            parts.append(part)
        out.append("Worst sites: " + ", ".join(parts) + ".")
    cells = [c for c in s.cells if c.uptime is not None]
    if cells:
        out.append(f"Worst geohash cell: {cells[0].key} at {pct(cells[0].uptime)}.")
    r = s.alert_down_correlation
    if r is not None:
        strength = "strongly" if abs(r) >= 0.6 else "moderately" if abs(r) >= 0.3 else "weakly"
        out.append(
            f"Alerts and downtime per device-day are {strength} correlated (r = {r:.2f}): "
            + ("alerts point at the outages." if r >= 0.3 else "alerts alone do not explain them.")
        )
    out.append(
        f"Unknown time (no gateway could hear): {hours(s.total.unknown_s)}; "
        f"downtime {hours(s.total.down_s)}; up {hours(s.total.up_s)}."
    )
    return out


def _why(s: Summary) -> str:
    parts = [
        '<section class="why"><h2>Why</h2>',
        f'<p class="headline">{e(headline(s))}</p>',
        _tiles(s),
        '<ul class="facts">' + "".join(f"<li>{e(f)}</li>" for f in facts(s)) + "</ul>",
    ]
    if s.next_steps:
        parts.append("<h3>Where to look next</h3>")
        parts.append('<ol class="next">' + "".join(f"<li>{e(x)}</li>" for x in s.next_steps))
        parts.append("</ol>")
    if not s.target_from_gold:
        parts.append(
            f'<p class="note">The gold tables carry no uptime target; {pct(s.target)} '
            "([consolidate] uptime_target of the config) is used.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def _figures(plots: Sequence[Plot]) -> str:
    cards = [f"<figure><h3>{e(p.title)}</h3><p>{e(p.caption)}</p>{p.svg}</figure>" for p in plots]
    return '<div class="grid">' + "".join(cards) + "</div>"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    """An HTML table; columns in ``numeric`` are right-aligned."""

    def cell(tag: str, i: int, v: object) -> str:
        cls = ' class="n"' if i in numeric else ""
        return f"<{tag}{cls}>{e('' if v is None else v)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(s: Summary, limit: int = 20) -> str:
    fw = table(
        ["firmware", "device-days", "down", "uptime"],
        [(g.key, g.device_days, hours(g.down_s), pct(g.uptime, 2)) for g in s.firmware[:limit]],
        {1, 2, 3},
    )
    sites = table(
        ["site", "device-days", "down", "uptime"],
        [(g.key, g.device_days, hours(g.down_s), pct(g.uptime, 2)) for g in s.sites[:limit]],
        {1, 2, 3},
    )
    devs = table(
        ["device", "site", "firmware", "down", "uptime"],
        [
            (d.device_id, d.site, d.firmware_version, hours(d.down_s), pct(d.uptime, 2))
            for d in s.top_devices[:10]
        ],
        {3, 4},
    )
    more = lambda n, what: (  # noqa: E731
        f'<p class="note">{n - limit} more {what} not shown.</p>' if n > limit else ""
    )
    return (
        '<div class="tables">'
        f"<section><h2>Firmware versions</h2>{fw}{more(len(s.firmware), 'versions')}</section>"
        f"<section><h2>Sites, worst first</h2>{sites}{more(len(s.sites), 'sites')}</section>"
        f"<section><h2>Devices with the most downtime</h2>{devs}</section>"
        "</div>"
    )


def _num(v: float | None, fmt: str = "{:,.3f}") -> str:
    return "" if v is None else fmt.format(v)


def _run_header(lin: Lineage, meta: Meta) -> str:
    status_cls = "ok" if lin.status == "ok" else "failed"
    what = " ".join(x for x in (lin.engine, lin.mode) if x)
    days = f"days {lin.days[0]} to {lin.days[-1]}" if lin.days else ""
    facts = ", ".join(
        x
        for x in (
            f"started {lin.started_at}" if lin.started_at else "",
            f"{_num(lin.duration_s, '{:,.2f}')} s" if lin.duration_s is not None else "",
            what,
            days,
        )
        if x
    )
    return (
        f"<p>The tables come from run <b>{e(lin.run_id)}</b>"
        + (f" of <b>{e(lin.pipeline)}</b>" if lin.pipeline else "")
        + f': <span class="{status_cls}">{e(lin.status)}</span>, {e(facts)}.'
        + (f" {e(lin.message)}" if lin.message else "")
        + f' <span class="note">Record: {e(meta.run_path or "")}</span></p>'
    )


def _steps_and_gates(lin: Lineage) -> str:
    steps = table(
        ["step", "status", "rows out", "columns", "seconds", "cache"],
        [
            (
                st.name + (f" \N{EM DASH} {st.note}" if st.note else ""),
                st.status,
                st.rows,
                st.columns,
                _num(st.duration_s),
                st.cache,
            )
            for st in lin.steps
        ],
        {2, 3, 4},
    )
    gates = (
        table(
            ["gate", "on", "result", "checked", "failed", "detail"],
            [
                (
                    g.name,
                    g.on,
                    "passed" if g.passed else "FAILED",
                    g.checked_rows,
                    g.failed_rows,
                    g.detail,
                )
                for g in lin.gates
            ],
            {3, 4},
        )
        if lin.gates
        else '<p class="note">The record lists no gates.</p>'
    )
    parts = [f'<div class="grid"><div><h3>Steps</h3>{steps}</div><div>']
    parts.append(f"<h3>Validation gates</h3>{gates}")
    if lin.published:
        parts.append("<h3>Published</h3>")
        parts.append(table(["table", "Delta version", "rows", "overwrote"], lin.published, {1, 2}))
    if lin.sources:
        parts.append("<h3>Source files</h3>")
        parts.append(
            table(["source", "path", "sha256"], [(n, p, h[:16]) for n, p, h in lin.sources], set())
        )
    parts.append("<h3>Step inputs</h3>")
    parts.append(table(["input", "rows", "columns"], lin.inputs, {1, 2}))
    parts.append("<h3>Input batches</h3>")
    if lin.batches_total is None:
        parts.append('<p class="note">The record does not list its input batches.</p>')
    else:
        parts.append(
            table(
                ["batch", "gateway", "rows", "detail"],
                [(b.batch_id, b.gateway_id, b.rows, b.detail) for b in lin.batches],
                {2},
            )
        )
        if lin.batches_total > len(lin.batches):
            parts.append(
                f'<p class="note">{lin.batches_total - len(lin.batches)} more batches '
                f"({lin.batches_total} in all).</p>"
            )
    parts.append("</div></div>")
    return "".join(parts)


def _lineage(lin: Lineage | None, meta: Meta) -> str:
    parts = ['<section class="lineage"><h2>Lineage</h2>']
    if lin is None:
        parts.append(
            '<p class="note">No successful run record was found, so the steps behind these '
            "tables cannot be shown (records live in the runs folder next to gold).</p>"
        )
    else:
        parts.append(_run_header(lin, meta))
    for line in meta.newer_failed:
        parts.append(f'<p class="failed">A newer run published nothing: {e(line)}</p>')
    if lin is not None:
        parts.append(_steps_and_gates(lin))
    if meta.history:
        parts.append("<h3>Recent runs</h3>")
        parts.append(
            table(
                ["run", "started", "status", "mode", "new batches", "days", "message"],
                meta.history,
                {4, 5},
            )
        )
    parts.append("<h3>Gold tables read</h3>")
    parts.append(
        table(
            ["table", "Delta version", "committed", "rows"],
            [(v.name, v.version, v.committed_at, v.rows) for v in meta.versions],
            {1, 3},
        )
    )
    parts.append("</section>")
    return "".join(parts)


def render(s: Summary, plots: Sequence[Plot], lin: Lineage | None, meta: Meta) -> str:
    """The whole page."""
    title = f"fleetpulse report · {s.first_day} \N{EN DASH} {s.last_day}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"
        "<header><h1>Fleet uptime report</h1>"
        f'<p class="meta">{e(_day(s.first_day))} \N{EN DASH} {e(_day(s.last_day))} · '
        f"{s.device_count:,} devices · generated {e(meta.generated_at)} from {e(meta.gold_dir)}"
        "</p></header>"
        f"{_why(s)}{_figures(plots)}<p></p>{_tables(s)}<p></p>{_lineage(lin, meta)}"
        "<footer><p>Uptime = Σ up_s / Σ (up_s + down_s) over the rows of a group (time-weighted, "
        "never a mean of ratios); unknown time (no gateway could hear the device) counts as "
        "neither. Connectivity ratio = heartbeat slots holding a reading ÷ observed slots. "
        "Definitions: docs/kpi.md.</p></footer>"
        "</main></body></html>\n"
    )
