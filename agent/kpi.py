"""Per device and day: up_s, down_s, unknown_s, device_uptime, connectivity_ratio (DESIGN §4).

Pure functions on Arrow/numpy arrays; the decisions DESIGN §4 leaves open are
written down in docs/kpi.md. Times are epoch milliseconds in float64 (exact for
whole and half milliseconds), results in seconds. Interval arithmetic runs on
sorted arrays (agent/intervals.py): no per-second or per-reading Python loop, so
a million readings take a second or two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from schemas import DEFAULT_GAP_K, DEFAULT_HEARTBEAT_S, NO_SEQ, SKEW_LIMIT_MS, Device
from schemas.batch import RECORD_OBSERVATION, RECORD_READING

from .errors import KpiInputError
from .intervals import F64, I64, Coverage, distinct, packed_key

DAY_MS = 86_400_000.0
_TS_MS = pa.timestamp("ms", tz="UTC")

KPI_SCHEMA = pa.schema(
    [
        pa.field("day", pa.date32(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("site", pa.string()),
        pa.field("heartbeat_s", pa.float64(), nullable=False),
        pa.field("eligible_s", pa.float64(), nullable=False),
        pa.field("up_s", pa.float64(), nullable=False),
        pa.field("down_s", pa.float64(), nullable=False),
        pa.field("unknown_s", pa.float64(), nullable=False),
        pa.field("device_uptime", pa.float64()),
        pa.field("connectivity_ratio", pa.float64()),
        # heartbeat slots whose start was observed and eligible, and those holding a reading
        pa.field("slots_counted", pa.int64(), nullable=False),
        pa.field("slots_holding", pa.int64(), nullable=False),
    ]
)

_READING_COLUMNS = ("gateway_id", "device_id", "kind", "ts", "seq", "received_at", "state")


# -- preparing readings -------------------------------------------------------------------


def _ranks(col: pa.ChunkedArray | pa.Array) -> tuple[I64, list[str]]:
    """Codes ordered like the strings (so sorting codes sorts the text), and the strings."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    words = enc.dictionary.to_pylist()
    order = sorted(range(len(words)), key=lambda i: words[i])
    rank = np.empty(len(words), dtype=np.int64)
    rank[order] = np.arange(len(words), dtype=np.int64)
    idx = enc.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return rank[idx], [words[i] for i in order]


def _ms(col: pa.ChunkedArray) -> F64:
    return np.asarray(col.cast(_TS_MS).cast(pa.int64()).to_numpy(), dtype=np.float64)


@dataclass(frozen=True)
class Readings:
    """Every received reading row (copies included) as arrays; ``keep`` marks the deduplicated."""

    device: I64  # index into devices
    gateway: I64  # index into gateways
    event_ms: F64
    offline: npt.NDArray[np.bool_]
    kind: I64
    seq: I64
    keep: npt.NDArray[np.bool_]
    skewed: npt.NDArray[np.bool_]
    devices: list[str]
    gateways: list[str]
    # the site of each device's latest reading (topic), for devices missing from the registry
    sites: dict[str, str]


def prepare_readings(rows: pa.Table) -> Readings:
    """Event times, the skew flag and cross-gateway dedup of reading rows (BATCH_SCHEMA names).

    Dedup key (device_id, kind, ts, seq) on the device's raw ts; of several copies the
    one with the smallest (received_at, gateway_id) is kept.
    """
    missing = [c for c in _READING_COLUMNS if c not in rows.column_names]
    if missing:
        raise KpiInputError(
            f"readings lack columns {missing}; pass rows in schemas.batch.BATCH_SCHEMA form"
        )
    n = rows.num_rows
    for c in ("gateway_id", "device_id", "kind", "ts"):
        if rows[c].null_count:
            raise KpiInputError(f"reading rows have null {c!r}; every reading needs one")
    device, devices = _ranks(rows["device_id"])
    gateway, gateways = _ranks(rows["gateway_id"])
    kind, kinds = _ranks(rows["kind"])
    ts = _ms(rows["ts"])
    recv_col = rows["received_at"]
    recv = _ms(recv_col.fill_null(rows["ts"])) if n else ts
    seq = np.asarray(rows["seq"].fill_null(NO_SEQ).to_numpy(), dtype=np.int64)
    state = rows["state"]
    offline = np.asarray(
        pc.fill_null(
            pc.and_(pc.equal(rows["kind"], "status"), pc.equal(state, "offline")), False
        ).to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    skewed = ts - recv > SKEW_LIMIT_MS
    event = np.where(skewed, recv, ts)
    # group copies of one key: sort by (device, kind, ts, seq), then pick the best copy
    packed = packed_key(device * max(len(kinds), 1) + kind, ts)
    order = np.lexsort((seq, packed) if packed is not None else (seq, ts, kind, device))
    same = np.zeros(n, dtype=bool)
    if n > 1:
        o = order
        same[1:] = (
            (device[o[1:]] == device[o[:-1]])
            & (kind[o[1:]] == kind[o[:-1]])
            & (ts[o[1:]] == ts[o[:-1]])
            & (seq[o[1:]] == seq[o[:-1]])
        )
    group = np.cumsum(~same) - 1  # group number of each position in order
    keep = np.zeros(n, dtype=bool)
    keep[order[~same]] = True
    dup_groups = np.unique(group[same])
    if dup_groups.size:
        # only rows with copies need the (received_at, gateway_id) choice: usually few
        pos = np.flatnonzero(np.isin(group, dup_groups))
        rows_ = order[pos]
        best = np.lexsort((gateway[rows_], recv[rows_], group[pos]))
        first = np.append(True, group[pos][best][1:] != group[pos][best][:-1])
        keep[rows_] = False
        keep[rows_[best][first]] = True
    sites: dict[str, str] = {}
    if n and "site" in rows.column_names:
        # the site of each device's latest reading (rows without a site are skipped)
        site, site_words = _ranks(rows["site"])
        valid = np.flatnonzero(rows["site"].is_valid().to_numpy(zero_copy_only=False))
        if valid.size:
            vd, ve = device[valid], event[valid]
            latest = np.full(len(devices), -np.inf)
            np.maximum.at(latest, vd, ve)
            hit = valid[ve == latest[vd]]
            for d_code, s_code in zip(device[hit].tolist(), site[hit].tolist(), strict=True):
                sites[devices[d_code]] = site_words[s_code]
    return Readings(
        device, gateway, event, offline, kind, seq, keep, skewed, devices, gateways, sites
    )


# -- up intervals -------------------------------------------------------------------------


def up_intervals(
    device: I64,
    event_ms: F64,
    offline: npt.NDArray[np.bool_],
    kind: I64,
    seq: I64,
    heartbeat_ms: F64,
    gap_ms: F64,
) -> tuple[I64, F64, F64]:
    """Up intervals (device, start, end) of deduplicated readings, by the walk of DESIGN §4.

    ``heartbeat_ms``/``gap_ms`` are indexed by device. Consecutive readings t1 < t2:
    after an offline nothing is up; t2 - t1 <= G makes [t1, t2) up; a longer gap (or
    no next reading) credits [t1, t1 + h/2). Readings at the same instant are ordered
    with an offline last, so it takes effect after the others.
    """
    # kind and seq never change the walk (equal instants are zero-length steps): sort by
    # (device, event time, offline last), packed into one key when it fits
    packed = packed_key(device, event_ms, width=2)
    if packed is None:
        order = np.lexsort((seq, kind, offline, event_ms, device))
    else:
        order = np.argsort(packed * 2 + offline, kind="stable")
    d, t, off = device[order], event_ms[order], offline[order]
    n = t.size
    nxt = np.full(n, np.inf)
    if n > 1:
        same = d[1:] == d[:-1]
        nxt[:-1] = np.where(same, t[1:], np.inf)
    gap = nxt - t
    h = heartbeat_ms[d]
    length = np.where(gap <= gap_ms[d], gap, h / 2)
    length = np.where(off, 0.0, length)
    keep = length > 0
    return d[keep], t[keep], t[keep] + length[keep]


# -- the whole computation ----------------------------------------------------------------


@dataclass(frozen=True)
class _Universe:
    ids: list[str]
    index: dict[str, int]
    heartbeat_ms: F64
    gap_ms: F64
    elig_from: F64
    elig_to: F64
    sites: list[str | None]


def _universe(
    registry: Sequence[Device], seen: Iterable[str], sites: dict[str, str], gap_k: float
) -> _Universe:
    by_id: dict[str, Device] = {}
    for dev in registry:
        if dev.device_id in by_id:
            raise KpiInputError(
                f"device_id {dev.device_id!r} appears twice in the registry; keep one row"
            )
        by_id[dev.device_id] = dev
    ids = sorted(set(by_id) | set(seen))
    n = len(ids)
    hb = np.full(n, DEFAULT_HEARTBEAT_S * 1000.0)
    gap = np.full(n, gap_k * DEFAULT_HEARTBEAT_S * 1000.0)
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    site: list[str | None] = []
    for i, did in enumerate(ids):
        reg = by_id.get(did)
        if reg is None:
            site.append(sites.get(did))
            continue
        hb[i] = reg.heartbeat_s * 1000.0
        gap[i] = (reg.gap_k if reg.gap_k is not None else gap_k) * hb[i]
        if reg.commissioned_at is not None:
            lo[i] = reg.commissioned_at.timestamp() * 1000.0
        if reg.decommissioned_at is not None:
            hi[i] = reg.decommissioned_at.timestamp() * 1000.0
        site.append(reg.site)
    return _Universe(ids, {d: i for i, d in enumerate(ids)}, hb, gap, lo, hi, site)


def _observed(
    r: Readings,
    dev_of_row: I64,
    u: _Universe,
    obs_gw: list[str],
    obs_from: F64,
    obs_to: F64,
    given: Mapping[str, Coverage] | None = None,
) -> tuple[list[Coverage], I64]:
    """Observed coverage per gateway set, and each device's gateway-set index (-1: none).

    A gateway's coverage: its own observation intervals and [t, t + 2 h_max) after every
    reading it received (all copies: a gateway that got a copy was listening), h_max the
    longest heartbeat of the devices it reported. ``given`` replaces it per gateway.
    """
    ng = len(r.gateways)
    gw_index = {g: i for i, g in enumerate(r.gateways)}
    h_max = np.zeros(ng)
    if dev_of_row.size:
        np.maximum.at(h_max, r.gateway, u.heartbeat_ms[dev_of_row])
    obs_g = np.array([gw_index.get(g, -1) for g in obs_gw], dtype=np.int64)
    # gateway sets per device, from every copy in the data
    pair_keys = distinct(dev_of_row * max(ng, 1) + r.gateway)
    sets: dict[tuple[int, ...], int] = {}
    set_of_dev = np.full(len(u.ids), -1, dtype=np.int64)
    if pair_keys.size:
        members: dict[int, list[int]] = {}
        for d, g in zip((pair_keys // ng).tolist(), (pair_keys % ng).tolist(), strict=True):
            members.setdefault(d, []).append(g)
        for d, gws in members.items():
            set_of_dev[d] = sets.setdefault(tuple(gws), len(sets))
    coverages = []
    for gs in sets:
        if given is not None:
            names = [r.gateways[g] for g in gs]
            if lost := [g for g in names if g not in given]:
                raise KpiInputError(f"no observed coverage given for gateway(s) {lost}")
            # a union of unions: the same merged intervals as computing it from all rows
            starts = np.concatenate([given[g].starts for g in names])
            ends = np.concatenate([given[g].ends for g in names])
            coverages.append(Coverage.of(starts, ends))
            continue
        sel_r = np.isin(r.gateway, gs)
        sel_o = np.isin(obs_g, gs)
        starts = np.concatenate((r.event_ms[sel_r], obs_from[sel_o]))
        ends = np.concatenate((r.event_ms[sel_r] + 2 * h_max[r.gateway[sel_r]], obs_to[sel_o]))
        coverages.append(Coverage.of(starts, ends))
    return coverages, set_of_dev


def _day_ms(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000.0


def compute_kpis(
    batch: pa.Table,
    registry: Sequence[Device],
    days: Iterable[date],
    *,
    gap_k: float = DEFAULT_GAP_K,
    observed: Mapping[str, Coverage] | None = None,
) -> pa.Table:
    """KPI rows (KPI_SCHEMA) for every day asked and every device with eligible time that day.

    ``batch`` holds reading rows and observation rows in schemas.batch.BATCH_SCHEMA form
    (several batches concatenated are fine; other columns are ignored). Devices are those
    of the registry plus those seen in readings; a device missing from the registry has a
    30 s heartbeat, the config ``gap_k``, the whole day eligible and its topic's site.

    ``observed`` (gateway id → its coverage, rule 4 of docs/kpi.md over *all* the data)
    replaces the coverage derived from ``batch`` (whose observation rows are then
    ignored). Rule 4 needs every device's readings, the rest of the figures only the
    device's own: with it, ``batch`` and ``registry`` may hold a subset of the devices
    — each device with all its rows — and give those devices' rows exactly (agent/dag.py
    computes a busy day in such chunks).
    """
    if gap_k < 1:
        raise KpiInputError(
            f"gap_k {gap_k} is below 1; a gap shorter than a heartbeat is not an outage"
        )
    for col in ("record_type", "gateway_id", "ts"):
        if col not in batch.column_names:
            raise KpiInputError(f"batch lacks column {col!r}; pass schemas.batch.BATCH_SCHEMA rows")
    rtype = batch["record_type"]
    rows = batch.filter(pc.equal(rtype, RECORD_READING))
    obs = batch.filter(pc.equal(rtype, RECORD_OBSERVATION))
    if obs.num_rows and obs["end_ts"].null_count:
        raise KpiInputError("observation rows need end_ts (the end of the connected interval)")
    r = prepare_readings(rows)
    u = _universe(registry, r.devices, r.sites, gap_k)
    dev_of_row = (
        np.array([u.index[d] for d in r.devices], dtype=np.int64)[r.device]
        if len(r.devices)
        else np.zeros(0, dtype=np.int64)
    )
    coverages, set_of_dev = _observed(
        r,
        dev_of_row,
        u,
        obs["gateway_id"].to_pylist(),
        _ms(obs["ts"]),
        _ms(obs["end_ts"]),
        observed,
    )
    k = r.keep
    up_dev, up_s, up_e = up_intervals(
        dev_of_row[k], r.event_ms[k], r.offline[k], r.kind[k], r.seq[k], u.heartbeat_ms, u.gap_ms
    )
    read_dev, read_t = dev_of_row[k], r.event_ms[k]
    return _tabulate(
        [
            _one_day(day, u, up_dev, up_s, up_e, read_dev, read_t, coverages, set_of_dev)
            for day in sorted(set(days))
        ]
    )


def _one_day(
    day: date,
    u: _Universe,
    up_dev: I64,
    up_s: F64,
    up_e: F64,
    read_dev: I64,
    read_t: F64,
    coverages: list[Coverage],
    set_of_dev: I64,
) -> dict[str, Any]:
    nd = len(u.ids)
    d0 = _day_ms(day)
    a = np.maximum(d0, u.elig_from)
    b = np.minimum(d0 + DAY_MS, u.elig_to)
    eligible = np.maximum(b - a, 0.0)
    # up ∩ eligible
    cs, ce = np.maximum(up_s, a[up_dev]), np.minimum(up_e, b[up_dev])
    clipped = np.maximum(ce - cs, 0.0)
    up = np.bincount(up_dev, weights=clipped, minlength=nd)
    observed = np.zeros(nd)
    observed_up = np.zeros(nd)
    counted = np.zeros(nd, dtype=np.int64)
    holding = np.zeros(nd, dtype=np.int64)
    # slots holding a reading: (device, slot index) pairs of the day
    in_day = (read_t >= d0) & (read_t < d0 + DAY_MS)
    rd = read_dev[in_day]
    slot = np.floor((read_t[in_day] - d0) / u.heartbeat_ms[rd]).astype(np.int64)
    # one int64 key per (device, slot) so np.unique runs on a flat array
    width = int(slot.max()) + 1 if slot.size else 1
    keys = distinct(rd * width + slot)
    slot_dev, slot_idx = keys // width, keys % width
    slot_start = d0 + slot_idx * u.heartbeat_ms[slot_dev]
    for g, cov in enumerate(coverages):
        devs = np.flatnonzero((set_of_dev == g) & (eligible > 0))
        if devs.size == 0:
            continue
        observed[devs] = cov.measure(a[devs], b[devs])
        sel = np.isin(up_dev, devs) & (clipped > 0)
        observed_up += np.bincount(up_dev[sel], weights=cov.measure(cs[sel], ce[sel]), minlength=nd)
        counted[devs] = cov.slot_starts_in(a[devs], b[devs], d0, u.heartbeat_ms[devs])
        sel = np.isin(slot_dev, devs)
        sd, st = slot_dev[sel], slot_start[sel]
        ok = cov.contains(st) & (st >= a[sd]) & (st < b[sd])
        holding += np.bincount(sd[ok], minlength=nd)
    # |eligible \ observed \ up| = eligible - |eligible & (observed | up)|
    unknown = eligible - (observed + up - observed_up)
    down = eligible - up - unknown
    return {
        "day": day,
        "eligible": eligible,
        "up": up,
        "down": down,
        "unknown": unknown,
        "counted": counted,
        "holding": holding,
        "u": u,
    }


def _tabulate(days: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {f.name: [] for f in KPI_SCHEMA}
    for d in days:
        u: _Universe = d["u"]
        for i in np.flatnonzero(d["eligible"] > 0):
            up, down = float(d["up"][i]) / 1000, float(d["down"][i]) / 1000
            counted, holding = int(d["counted"][i]), int(d["holding"][i])
            cols["day"].append(d["day"])
            cols["device_id"].append(u.ids[i])
            cols["site"].append(u.sites[i])
            cols["heartbeat_s"].append(float(u.heartbeat_ms[i]) / 1000)
            cols["eligible_s"].append(float(d["eligible"][i]) / 1000)
            cols["up_s"].append(up)
            cols["down_s"].append(down)
            cols["unknown_s"].append(float(d["unknown"][i]) / 1000)
            cols["device_uptime"].append(up / (up + down) if up + down > 0 else None)
            cols["connectivity_ratio"].append(min(1.0, holding / counted) if counted else None)
            cols["slots_counted"].append(counted)
            cols["slots_holding"].append(holding)
    return pa.Table.from_pydict(cols, schema=KPI_SCHEMA)


def kpi_checks(table: pa.Table, tolerance_s: float = 1e-6) -> dict[str, pa.Array]:
    """Row masks for a pipeline gate on KPI rows (True = row passes), keyed by the reason.

    Null ratios are fine (nothing to divide by); everything else must hold exactly
    up to ``tolerance_s`` seconds.
    """

    def within(col: str) -> Any:
        v = table[col]
        ok = pc.and_(pc.greater_equal(v, 0.0), pc.less_equal(v, 1.0))
        return pc.fill_null(ok, True)

    parts = pc.add(pc.add(table["up_s"], table["down_s"]), table["unknown_s"])
    return {
        "device_uptime outside [0, 1]": within("device_uptime"),
        "connectivity_ratio outside [0, 1]": within("connectivity_ratio"),
        "up_s + down_s + unknown_s != eligible_s": pc.less_equal(
            pc.abs(pc.subtract(parts, table["eligible_s"])), tolerance_s
        ),
        "negative up_s, down_s or unknown_s": pc.and_(
            pc.and_(
                pc.greater_equal(table["up_s"], -tolerance_s),
                pc.greater_equal(table["down_s"], -tolerance_s),
            ),
            pc.greater_equal(table["unknown_s"], -tolerance_s),
        ),
    }
