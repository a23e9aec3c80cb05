"""Baseline: the same fan-in in vectorised pandas/numpy, written as well as we could.

Same definitions as central/consolidate. Interval joins are done by sorted search on
composite integer keys (device code, time), not by cross joins, so memory stays linear.
Assumes what the benchmark data guarantees: times in whole milliseconds, fewer than 2**20
devices. Used by bench_consolidate.py; its device_day is checked against the Ibis one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DAY = 86_400_000
FAR = 1e15
COLS = [
    "record_type",
    "gateway_id",
    "device_id",
    "site",
    "kind",
    "ts",
    "seq",
    "received_at",
    "end_ts",
    "state",
]


def _ms(col: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a datetime column (any unit); NaN where missing."""
    return ((col - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(milliseconds=1)).to_numpy(float)


def _read(files: Sequence[str]) -> pd.DataFrame:
    parts = []
    for f in files:
        t = pq.read_table(f, columns=COLS)
        bid = f.rsplit("/", 1)[-1].removesuffix(".parquet")
        parts.append(t.append_column("batch_id", pa.array([bid] * t.num_rows, pa.string())))
    t = pa.concat_tables(parts)
    cast = {c: t[c].cast(pa.int64()) for c in ("ts", "received_at", "end_ts")}
    for c, v in cast.items():
        t = t.set_column(t.schema.get_field_index(c), c, v)
    return t.to_pandas()


def merge_intervals(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Union of [s, e) per key as islands."""
    df = df[df.e > df.s].sort_values([key, "s", "e"], kind="stable")
    k = df[key].to_numpy()
    s, e = df.s.to_numpy(), df.e.to_numpy()
    reach = df.groupby(key, sort=False).e.cummax().to_numpy()
    prev = np.r_[-np.inf, reach[:-1]]
    first = np.r_[True, k[1:] != k[:-1]]
    starts = first | (s > prev)
    isl = np.cumsum(starts)
    out = pd.DataFrame({key: k, "isl": isl, "s": s, "e": e})
    return (
        out.groupby([key, "isl"], sort=False)
        .agg(s=("s", "min"), e=("e", "max"))
        .reset_index(level=1, drop=True)
        .reset_index()
    )


def overlap(
    iv_dev: np.ndarray,
    s: np.ndarray,
    e: np.ndarray,
    w_dev: np.ndarray,
    ws: np.ndarray,
    we: np.ndarray,
) -> np.ndarray:
    """Per window: total length of the intervals inside it. Windows disjoint per device."""
    order = np.lexsort((ws, w_dev))
    wd, wss, wee = w_dev[order], ws[order], we[order]
    # one sorted key for (device, time): device * big + time since the first window, with
    # times clipped to the windows' span (nothing outside it counts); exact in float64
    if len(wd):
        lo, hi = float(wss.min()) - 1.0, float(wee.max()) + 1.0
    else:
        lo, hi = 0.0, 1.0
    big = float(2 ** int(np.ceil(np.log2(hi - lo + 2))))
    assert (max(int(w_dev.max(initial=0)), int(iv_dev.max(initial=0))) + 1) * big < 2**52
    key_w = wd * big + (np.clip(wee, lo, hi) - lo)
    key_i = iv_dev * big + (np.clip(s, lo, hi) - lo)
    # first window of the same device whose end lies after the interval's start
    j = np.searchsorted(key_w, key_i, side="right")
    acc = np.zeros(len(wd))
    idx = np.arange(len(s))
    n = len(wd)
    while idx.size:
        jj = j[idx]
        ok = jj < n
        idx, jj = idx[ok], jj[ok]
        same = (wd[jj] == iv_dev[idx]) & (wss[jj] < e[idx]) & (wee[jj] > s[idx])
        hit_i, hit_j = idx[same], jj[same]
        length = np.minimum(e[hit_i], wee[hit_j]) - np.maximum(s[hit_i], wss[hit_j])
        acc += np.bincount(hit_j, weights=length, minlength=n)
        # intervals that run past this window may overlap the next one of the device
        more = (wd[jj] == iv_dev[idx]) & (wee[jj] < e[idx])
        idx = idx[more]
        j[idx] += 1
    out = np.empty_like(acc)
    out[order] = acc
    return out


def run(
    files: Sequence[str],
    batches: pa.Table,
    registry: pa.Table,
    firmware: pa.Table,
    alerts: pa.Table,
    days: Sequence[date],
    gap_k: float = 2.5,
    target: float = 0.99,
) -> dict[str, pd.DataFrame]:
    df = _read(files)
    b = batches.to_pandas()[["batch_id", "ledger_gateway_id"]]
    df = df.merge(b, on="batch_id")
    ts, recv = df.ts.to_numpy(), df.received_at.fillna(df.ts).to_numpy().astype(np.int64)
    df["recv_ms"] = recv
    df["event_ms"] = np.where(ts - recv > 300_000, recv, ts)
    df["is_offline"] = ((df.kind == "status") & (df.state == "offline")).astype(np.int8)
    df["seq"] = df.seq.fillna(-1).astype(np.int64)
    reading = df.record_type == "reading"
    bad = (
        (df.gateway_id != df.ledger_gateway_id)
        | ~df.record_type.isin(["reading", "observation"])
        | (reading & df.device_id.isna())
        | (reading & ~df.kind.isin(["telemetry", "status", "event"]))
        | (reading & (df.kind == "status") & ~df.state.isin(["online", "offline"]))
    )
    obs_rows = df[(df.record_type == "observation") & ~bad & df.end_ts.notna()]
    obs = pd.DataFrame(
        {
            "gateway_id": obs_rows.gateway_id,
            "s": obs_rows.ts.astype(float),
            "e": obs_rows.end_ts.astype(float),
        }
    )
    obs = obs[obs.e > obs.s].drop_duplicates()
    rd = df[reading & ~bad]
    bronze = rd.sort_values(
        ["device_id", "kind", "ts", "seq", "recv_ms", "gateway_id", "batch_id"], kind="stable"
    ).drop_duplicates(["device_id", "kind", "ts", "seq"])

    # devices: registry plus every device seen (site of its latest reading)
    last = bronze.sort_values(["device_id", "event_ms", "ts", "kind", "seq"]).drop_duplicates(
        "device_id", keep="last"
    )[["device_id", "site"]]
    reg = registry.to_pandas()
    dev = reg.merge(last, on="device_id", how="outer", suffixes=("", "_seen"))
    dev["in_registry"] = dev.heartbeat_s.notna()
    dev["site"] = dev.site.fillna(dev.site_seen)
    dev["h_ms"] = dev.heartbeat_s.fillna(30.0) * 1000
    dev["g_ms"] = dev.gap_k.fillna(gap_k) * dev.h_ms
    dev["comm_ms"] = np.nan_to_num(_ms(dev.commissioned_at), nan=-FAR)
    dev["decomm_ms"] = np.nan_to_num(_ms(dev.decommissioned_at), nan=FAR)
    dev = dev.reset_index(drop=True)
    code = pd.Series(np.arange(len(dev)), index=dev.device_id)

    day_idx = np.array([(d - date(1970, 1, 1)).days for d in days], dtype=np.int64)
    t = dev[["device_id", "h_ms", "comm_ms", "decomm_ms"]].merge(
        pd.DataFrame({"day_idx": day_idx, "day": list(days)}), how="cross"
    )
    t["d0"] = t.day_idx * float(DAY)
    t["d1"] = t.d0 + DAY
    t["e0"] = np.maximum(t.d0, t.comm_ms)
    t["e1"] = np.minimum(t.d1, t.decomm_ms)
    t = t[t.e1 > t.e0].reset_index(drop=True)
    t["dev"] = code.loc[t.device_id].to_numpy()

    # observed: per gateway, then per device through every gateway that reported it
    dg = rd[["device_id", "gateway_id"]].drop_duplicates()
    hmax = (
        dg.merge(dev[["device_id", "h_ms"]], on="device_id", how="left")
        .fillna({"h_ms": 30000.0})
        .groupby("gateway_id")
        .h_ms.max()
    )
    gr = rd[["gateway_id", "event_ms"]].drop_duplicates().sort_values(["gateway_id", "event_ms"])
    g = gr.gateway_id.to_numpy()
    tt = gr.event_ms.to_numpy().astype(float)
    reach = 2 * hmax.loc[g].to_numpy()
    first = np.r_[True, g[1:] != g[:-1]]
    starts = first | (tt > np.r_[-np.inf, tt[:-1]] + reach)
    isl = np.cumsum(starts)
    gi = (
        pd.DataFrame({"gateway_id": g, "isl": isl, "s": tt, "e": tt + reach})
        .groupby(["gateway_id", "isl"])
        .agg(s=("s", "min"), e=("e", "max"))
        .reset_index()
    )
    gw_obs = merge_intervals(pd.concat([gi[["gateway_id", "s", "e"]], obs]), "gateway_id")
    dev_obs = merge_intervals(
        dg.merge(gw_obs, on="gateway_id")[["device_id", "s", "e"]], "device_id"
    )

    # up intervals from consecutive readings
    bz = bronze.merge(dev[["device_id", "h_ms", "g_ms"]], on="device_id")
    bz = bz.sort_values(["device_id", "event_ms", "is_offline", "kind", "seq", "ts"], kind="stable")
    dcol = bz.device_id.to_numpy()
    t1 = bz.event_ms.to_numpy().astype(float)
    t2 = np.r_[t1[1:], np.nan]
    t2[np.r_[dcol[1:] != dcol[:-1], True]] = np.nan
    half = t1 + bz.h_ms.to_numpy() / 2
    end = np.where(np.isnan(t2), half, np.where(t2 - t1 <= bz.g_ms.to_numpy(), t2, half))
    keep = (bz.is_offline.to_numpy() == 0) & (end > t1)
    up = pd.DataFrame({"device_id": dcol[keep], "s": t1[keep], "e": end[keep]})
    cover = merge_intervals(pd.concat([up, dev_obs]), "device_id")

    # firmware segments
    fw = firmware.to_pandas()
    fw["inst"] = _ms(fw.installed_at)
    fw = fw.sort_values(["device_id", "inst", "firmware_version"])
    fw["e"] = fw.groupby("device_id").inst.shift(-1).fillna(FAR)
    win = pd.concat(
        [
            fw.rename(columns={"inst": "s"})[["device_id", "firmware_version", "s", "e"]],
            fw.groupby("device_id")
            .inst.min()
            .rename("e")
            .reset_index()
            .assign(firmware_version=None, s=-FAR),
            pd.DataFrame({"device_id": sorted(set(t.device_id) - set(fw.device_id))}).assign(
                firmware_version=None, s=-FAR, e=FAR
            ),
        ]
    )
    seg = t.merge(win, on="device_id")
    seg["ws"] = np.maximum(seg.e0, seg.s)
    seg["we"] = np.minimum(seg.e1, seg.e)
    seg = seg[seg.we > seg.ws].reset_index(drop=True)

    def codes(frame: pd.DataFrame) -> np.ndarray:
        return code.loc[frame.device_id].to_numpy()

    sdev, sws, swe = codes(seg), seg.ws.to_numpy(), seg.we.to_numpy()
    seg["up_ms"] = overlap(codes(up), up.s.to_numpy(), up.e.to_numpy(), sdev, sws, swe)
    cov = overlap(codes(cover), cover.s.to_numpy(), cover.e.to_numpy(), sdev, sws, swe)
    seg["eligible_ms"] = seg.we - seg.ws
    seg["down_ms"] = cov - seg.up_ms
    seg["unknown_ms"] = seg.eligible_ms - cov

    # connectivity: slot ranges from observed islands, slots holding a reading
    r = t.merge(dev_obs, on="device_id")
    r = r[(r.s < r.e1) & (r.e > r.e0)]
    lo = np.ceil((np.maximum(r.s, r.e0) - r.d0) / r.h_ms).astype(np.int64)
    hi = np.ceil((np.minimum(r.e, r.e1) - r.d0) / r.h_ms).astype(np.int64)
    ranges = pd.DataFrame({"device_id": r.device_id, "day_idx": r.day_idx, "lo": lo, "hi": hi})
    ranges = ranges[ranges.hi > ranges.lo]
    counted = (ranges.hi - ranges.lo).groupby([ranges.device_id, ranges.day_idx]).sum()
    counted = counted.rename("slots_observed")
    br = pd.DataFrame(
        {
            "device_id": bronze.device_id,
            "day_idx": bronze.event_ms // DAY,
            "event_ms": bronze.event_ms,
        }
    )
    br = br.merge(t[["device_id", "day_idx", "d0", "h_ms"]], on=["device_id", "day_idx"])
    br["slot"] = np.floor((br.event_ms - br.d0) / br.h_ms).astype(np.int64)
    slots = br[["device_id", "day_idx", "slot"]].drop_duplicates()
    base = int(day_idx.min()) if len(day_idx) else 0
    span = np.int64(1 << 22)

    def key(frame: pd.DataFrame, col: str) -> np.ndarray:
        return (
            codes(frame) * np.int64(1 << 12) + (frame.day_idx.to_numpy() - base)
        ) * span + frame[col].to_numpy()

    ranges = ranges.sort_values(["device_id", "day_idx", "lo"])
    rk, rhi = key(ranges, "lo"), key(ranges, "hi")
    sk = key(slots, "slot")
    j = np.searchsorted(rk, sk, side="right") - 1
    inside = (j >= 0) & (sk < rhi[np.clip(j, 0, None)])
    holding = slots[inside].groupby(["device_id", "day_idx"]).size().rename("slots_with_reading")
    readings = br.groupby(["device_id", "day_idx"]).size().rename("readings")

    # alerts: open during the day; eligible downtime while one was open
    al = alerts.to_pandas()
    al = al[al.cleared_at.isna() | (al.cleared_at >= al.raised_at)]
    al["s"] = _ms(al.raised_at)
    al["e"] = np.nan_to_num(_ms(al.cleared_at), nan=FAR)
    ta = t.merge(al[["alert_id", "device_id", "s", "e"]], on="device_id")
    ta = ta[(ta.s < ta.d1) & (ta.e >= ta.d0) & ((ta.e > ta.d0) | (ta.s >= ta.d0))]
    alert_count = ta.groupby(["device_id", "day_idx"]).alert_id.nunique().rename("alert_count")
    ai = merge_intervals(al[["device_id", "s", "e"]], "device_id")
    aw = t.merge(ai, on="device_id")
    aw["ws"] = np.maximum(aw.s, aw.e0)
    aw["we"] = np.minimum(aw.e, aw.e1)
    aw = aw[aw.we > aw.ws].reset_index(drop=True)
    adev, aws, awe = codes(aw), aw.ws.to_numpy(), aw.we.to_numpy()
    aw["a_up"] = overlap(codes(up), up.s.to_numpy(), up.e.to_numpy(), adev, aws, awe)
    aw["a_cov"] = overlap(codes(cover), cover.s.to_numpy(), cover.e.to_numpy(), adev, aws, awe)
    alert_down = (
        (aw.a_cov - aw.a_up).groupby([aw.device_id, aw.day_idx]).sum().rename("alert_down_ms")
    )

    per = seg.groupby(["device_id", "day_idx"]).agg(
        up_ms=("up_ms", "sum"), down_ms=("down_ms", "sum"), unknown_ms=("unknown_ms", "sum")
    )
    last_fw = seg.sort_values("ws").groupby(["device_id", "day_idx"]).firmware_version.last()
    dd = t.set_index(["device_id", "day_idx"]).join(per, how="inner").join(last_fw)
    dd = dd.join(counted).join(holding).join(readings).join(alert_count).join(alert_down)
    dd = dd.reset_index().merge(dev[["device_id", "site", "in_registry"]], on="device_id")
    for c in ("slots_observed", "slots_with_reading", "readings", "alert_count"):
        dd[c] = dd[c].fillna(0).astype(np.int64)
    dd["eligible_s"] = (dd.e1 - dd.e0) / 1000.0
    dd["up_s"] = dd.up_ms / 1000.0
    dd["down_s"] = dd.down_ms / 1000.0
    dd["unknown_s"] = dd.unknown_ms / 1000.0
    den = dd.up_s + dd.down_s
    dd["device_uptime"] = np.where(den > 0, dd.up_s / den.where(den > 0, 1), np.nan)
    dd["connectivity_ratio"] = np.where(
        dd.slots_observed > 0,
        np.minimum(dd.slots_with_reading / dd.slots_observed.where(dd.slots_observed > 0, 1), 1),
        np.nan,
    )
    dd["alert_down_s"] = dd.alert_down_ms.fillna(0) / 1000.0
    device_day = dd[
        [
            "day",
            "device_id",
            "site",
            "firmware_version",
            "eligible_s",
            "up_s",
            "down_s",
            "unknown_s",
            "device_uptime",
            "connectivity_ratio",
            "slots_observed",
            "slots_with_reading",
            "readings",
            "alert_count",
            "alert_down_s",
        ]
    ]

    dfd = (
        seg.groupby(["day", "device_id", "firmware_version"], dropna=False)
        .agg(
            eligible_s=("eligible_ms", "sum"),
            up_s=("up_ms", "sum"),
            down_s=("down_ms", "sum"),
            unknown_s=("unknown_ms", "sum"),
        )
        .reset_index()
    )
    for c in ("eligible_s", "up_s", "down_s", "unknown_s"):
        dfd[c] = dfd[c] / 1000.0

    def rollup(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        g = frame.groupby(by, dropna=False).agg(
            devices=("device_id", "nunique"),
            eligible_s=("eligible_s", "sum"),
            up_s=("up_s", "sum"),
            down_s=("down_s", "sum"),
            unknown_s=("unknown_s", "sum"),
        )
        den = g.up_s + g.down_s
        g["uptime"] = np.where(den > 0, g.up_s / den.where(den > 0, 1), np.nan)
        return g.reset_index()

    fleet = rollup(device_day, ["day"])
    fleet["devices_meeting_target"] = (
        device_day.assign(m=device_day.device_uptime >= target).groupby("day").m.sum().to_numpy()
    )
    return {
        "device_day": device_day,
        "device_firmware_day": dfd,
        "fleet_day": fleet,
        "firmware_day": rollup(dfd, ["day", "firmware_version"]),
        "site_day": rollup(device_day, ["day", "site"]),
    }
