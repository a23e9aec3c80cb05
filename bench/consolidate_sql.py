"""Baseline: the same fan-in by hand as one DuckDB SQL script (intermediates as temp tables).

It follows the same definitions as central/consolidate (bronze dedup, up intervals, observed
and covered islands, firmware segments, connectivity slots, alerts, roll-ups), the way a
DuckDB user would write it without Ibis. Used by bench_consolidate.py; its device_day is
checked against the Ibis pipeline's before any time is reported.
"""

# SQL text reads better unwrapped than cut at 100 columns.
# ruff: noqa: E501

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import duckdb
import pyarrow as pa


def _merge(src: str, key: str) -> str:
    """Union of [s, e) intervals per key as islands (running max of earlier ends)."""
    return f"""
    SELECT {key}, min(s) AS s, max(e) AS e FROM (
      SELECT *, sum(starts) OVER (PARTITION BY {key} ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS isl
      FROM (
        SELECT {key}, s, e, CASE WHEN reach IS NULL OR s > reach THEN 1 ELSE 0 END AS starts FROM (
          SELECT {key}, s, e, max(e) OVER (PARTITION BY {key} ORDER BY s, e
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
          FROM ({src}) WHERE e > s)))
    GROUP BY {key}, isl"""


def _overlap(intervals: str, windows: str, keys: str, name: str) -> str:
    return f"""
    SELECT {keys}, sum(least(i.e, w.we) - greatest(i.s, w.ws)) AS {name}
    FROM {windows} w JOIN {intervals} i ON i.device_id = w.device_id AND i.s < w.we AND i.e > w.ws
    GROUP BY ALL"""


def script(files: Sequence[str], days: Sequence[date], gap_k: float, target: float) -> list[str]:
    file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    day_rows = ", ".join(f"({(d - date(1970, 1, 1)).days}, DATE '{d.isoformat()}')" for d in days)
    return [
        "SET TimeZone = 'UTC'",
        "SET preserve_insertion_order = false",
        f"CREATE TEMP TABLE days AS SELECT * FROM (VALUES {day_rows}) v(day_idx, day)",
        f"""CREATE TEMP VIEW raw AS
        SELECT r.record_type, r.gateway_id, r.device_id, r.site, r.kind, r.state, r.event_type,
               epoch_ms(r.ts) AS ts_ms, epoch_ms(coalesce(r.received_at, r.ts)) AS recv_ms,
               epoch_ms(r.end_ts) AS end_ms, coalesce(r.seq, -1) AS seq,
               regexp_extract(r.filename, '([^/\\\\]+)\\.parquet$', 1) AS batch_id
        FROM read_parquet({file_list}, filename = true, union_by_name = true) r""",
        """CREATE TEMP VIEW rows AS
        SELECT r.*, b.ingested_at,
          CASE WHEN ts_ms - recv_ms > 300000 THEN recv_ms ELSE ts_ms END AS event_ms,
          CASE WHEN kind = 'status' AND state = 'offline' THEN 1 ELSE 0 END AS is_offline,
          CASE
            WHEN r.gateway_id <> b.ledger_gateway_id THEN 'gateway'
            WHEN record_type NOT IN ('reading', 'observation') THEN 'record_type'
            WHEN record_type = 'reading' AND device_id IS NULL THEN 'device'
            WHEN record_type = 'reading' AND kind NOT IN ('telemetry', 'status', 'event') THEN 'kind'
            WHEN record_type = 'reading' AND kind = 'status'
                 AND (state IS NULL OR state NOT IN ('online', 'offline')) THEN 'state'
            WHEN record_type = 'observation' AND end_ms IS NULL THEN 'end'
            WHEN record_type = 'observation' AND end_ms < ts_ms THEN 'order'
          END AS reason
        FROM raw r JOIN batches b USING (batch_id)""",
        """CREATE TEMP VIEW readings AS
        SELECT * FROM rows WHERE record_type = 'reading' AND reason IS NULL""",
        """CREATE TEMP TABLE bronze AS
        SELECT device_id, site, kind, ts_ms, seq, event_ms, is_offline, gateway_id, batch_id,
          ingested_at FROM readings
        QUALIFY row_number() OVER (PARTITION BY device_id, kind, ts_ms, seq
          ORDER BY recv_ms, gateway_id, batch_id, site, state, event_type) = 1""",
        """CREATE TEMP TABLE obs AS SELECT DISTINCT gateway_id, ts_ms::DOUBLE AS s, end_ms::DOUBLE AS e
        FROM rows WHERE record_type = 'observation' AND reason IS NULL AND end_ms > ts_ms""",
        """CREATE TEMP TABLE seen AS SELECT device_id, site FROM bronze
        QUALIFY row_number() OVER (PARTITION BY device_id
          ORDER BY event_ms DESC, ts_ms DESC, kind DESC, seq DESC, site DESC) = 1""",
        f"""CREATE TEMP TABLE devices AS
        SELECT coalesce(r.device_id, s.device_id) AS device_id, r.device_id IS NOT NULL AS in_registry,
          coalesce(r.site, s.site) AS site, r.lat, r.lon,
          coalesce(r.heartbeat_s, 30.0) * 1000 AS h_ms,
          coalesce(r.gap_k, {gap_k}) * coalesce(r.heartbeat_s, 30.0) * 1000 AS g_ms,
          coalesce(epoch_ms(r.commissioned_at)::DOUBLE, -1e15) AS comm_ms,
          coalesce(epoch_ms(r.decommissioned_at)::DOUBLE, 1e15) AS decomm_ms
        FROM registry r FULL JOIN seen s ON r.device_id = s.device_id""",
        """CREATE TEMP TABLE targets AS SELECT * FROM (
          SELECT d.device_id, k.day_idx, k.day, k.day_idx * 86400000.0 AS d0,
            k.day_idx * 86400000.0 + 86400000.0 AS d1,
            greatest(k.day_idx * 86400000.0, d.comm_ms) AS e0,
            least(k.day_idx * 86400000.0 + 86400000.0, d.decomm_ms) AS e1, d.h_ms
          FROM devices d CROSS JOIN days k) WHERE e1 > e0""",
        """CREATE TEMP TABLE gw_readings AS
        SELECT DISTINCT gateway_id, device_id, event_ms FROM readings""",
        "CREATE TEMP TABLE dg AS SELECT DISTINCT device_id, gateway_id FROM gw_readings",
        """CREATE TEMP TABLE hmax AS SELECT gateway_id, max(coalesce(d.h_ms, 30000.0)) AS hmax
        FROM dg LEFT JOIN devices d USING (device_id) GROUP BY gateway_id""",
        """CREATE TEMP TABLE gw_from_readings AS
        SELECT gateway_id, min(t) AS s, max(t) + 2 * any_value(hmax) AS e FROM (
          SELECT *, sum(starts) OVER (PARTITION BY gateway_id ORDER BY t ROWS UNBOUNDED PRECEDING) AS isl
          FROM (
            SELECT gateway_id, t, hmax,
              CASE WHEN lag(t) OVER w IS NULL OR t > lag(t) OVER w + 2 * hmax THEN 1 ELSE 0 END AS starts
            FROM (SELECT DISTINCT gateway_id, event_ms::DOUBLE AS t FROM gw_readings)
            JOIN hmax USING (gateway_id)
            WINDOW w AS (PARTITION BY gateway_id ORDER BY t)))
        GROUP BY gateway_id, isl""",
        "CREATE TEMP TABLE gw_obs AS "
        + _merge(
            "SELECT gateway_id, s, e FROM gw_from_readings UNION ALL SELECT gateway_id, s, e FROM obs",
            "gateway_id",
        ),
        "CREATE TEMP TABLE dev_obs AS "
        + _merge(
            "SELECT dg.device_id, g.s, g.e FROM dg JOIN gw_obs g USING (gateway_id)", "device_id"
        ),
        """CREATE TEMP TABLE up AS SELECT device_id, s, e FROM (
          SELECT device_id, t1 AS s, is_offline,
            CASE WHEN t2 IS NULL THEN t1 + h_ms / 2 WHEN t2 - t1 <= g_ms THEN t2
                 ELSE t1 + h_ms / 2 END AS e
          FROM (SELECT b.device_id, b.event_ms::DOUBLE AS t1, b.is_offline, d.h_ms, d.g_ms,
                  lead(b.event_ms) OVER (PARTITION BY b.device_id
                    ORDER BY b.event_ms, b.is_offline, b.kind, b.seq, b.ts_ms)::DOUBLE AS t2
                FROM bronze b JOIN devices d USING (device_id)))
        WHERE is_offline = 0 AND e > s""",
        "CREATE TEMP TABLE cover AS "
        + _merge(
            "SELECT device_id, s, e FROM up UNION ALL SELECT device_id, s, e FROM dev_obs",
            "device_id",
        ),
        """CREATE TEMP TABLE fw AS
        SELECT device_id, firmware_version, epoch_ms(installed_at)::DOUBLE AS inst FROM firmware""",
        """CREATE TEMP TABLE fw_windows AS
        SELECT device_id, firmware_version, inst AS s,
          coalesce(lead(inst) OVER (PARTITION BY device_id ORDER BY inst, firmware_version), 1e15) AS e
        FROM fw
        UNION ALL SELECT device_id, NULL, -1e15, min(inst) FROM fw GROUP BY device_id
        UNION ALL SELECT DISTINCT device_id, NULL, -1e15, 1e15 FROM targets
          WHERE device_id NOT IN (SELECT device_id FROM fw)""",
        """CREATE TEMP TABLE segments AS SELECT * FROM (
          SELECT t.device_id, t.day_idx, f.firmware_version,
            greatest(t.e0, f.s) AS ws, least(t.e1, f.e) AS we
          FROM targets t JOIN fw_windows f ON t.device_id = f.device_id AND f.s < t.e1 AND f.e > t.e0)
        WHERE we > ws""",
        "CREATE TEMP TABLE seg_up AS "
        + _overlap("up", "segments", "w.device_id, w.day_idx, w.ws", "up_ms"),
        "CREATE TEMP TABLE seg_cov AS "
        + _overlap("cover", "segments", "w.device_id, w.day_idx, w.ws", "cover_ms"),
        """CREATE TEMP TABLE seg_times AS
        SELECT s.device_id, s.day_idx, s.firmware_version, s.ws, s.we, s.we - s.ws AS eligible_ms,
          coalesce(u.up_ms, 0) AS up_ms, coalesce(c.cover_ms, 0) - coalesce(u.up_ms, 0) AS down_ms,
          (s.we - s.ws) - coalesce(c.cover_ms, 0) AS unknown_ms
        FROM segments s LEFT JOIN seg_up u USING (device_id, day_idx, ws)
        LEFT JOIN seg_cov c USING (device_id, day_idx, ws)""",
        """CREATE TEMP TABLE slot_ranges AS SELECT * FROM (
          SELECT t.device_id, t.day_idx,
            ceil((greatest(o.s, t.e0) - t.d0) / t.h_ms)::BIGINT AS lo,
            ceil((least(o.e, t.e1) - t.d0) / t.h_ms)::BIGINT AS hi
          FROM targets t JOIN dev_obs o ON t.device_id = o.device_id AND o.s < t.e1 AND o.e > t.e0)
        WHERE hi > lo""",
        """CREATE TEMP TABLE conn AS
        SELECT t.device_id, t.day_idx,
          coalesce((SELECT sum(hi - lo) FROM slot_ranges r
                    WHERE r.device_id = t.device_id AND r.day_idx = t.day_idx), 0) AS slots_observed,
          coalesce(h.n, 0) AS slots_with_reading
        FROM targets t LEFT JOIN (
          SELECT x.device_id, x.day_idx, count(*) AS n FROM (
            SELECT DISTINCT b.device_id, t.day_idx,
              floor((b.event_ms - t.d0) / t.h_ms)::BIGINT AS slot
            FROM bronze b JOIN targets t
              ON b.device_id = t.device_id AND b.event_ms // 86400000 = t.day_idx) x
          JOIN slot_ranges r ON x.device_id = r.device_id AND x.day_idx = r.day_idx
            AND x.slot >= r.lo AND x.slot < r.hi
          GROUP BY ALL) h USING (device_id, day_idx)""",
        """CREATE TEMP TABLE day_readings AS
        SELECT device_id, event_ms // 86400000 AS day_idx, count(*) AS readings
        FROM bronze GROUP BY ALL""",
        """CREATE TEMP TABLE alert_iv AS SELECT alert_id, device_id,
          epoch_ms(raised_at)::DOUBLE AS s,
          coalesce(epoch_ms(cleared_at)::DOUBLE, 1e15) AS e
        FROM alerts WHERE cleared_at IS NULL OR cleared_at >= raised_at""",
        """CREATE TEMP TABLE alert_counts AS
        SELECT t.device_id, t.day_idx, count(DISTINCT a.alert_id) AS alert_count
        FROM targets t JOIN alert_iv a ON t.device_id = a.device_id AND a.s < t.d1 AND a.e >= t.d0
        WHERE a.e > t.d0 OR a.s >= t.d0 GROUP BY ALL""",
        "CREATE TEMP TABLE alert_isl AS "
        + _merge("SELECT device_id, s, e FROM alert_iv", "device_id"),
        """CREATE TEMP TABLE win AS SELECT device_id, day_idx, e0 AS ws, e1 AS we FROM targets""",
        """CREATE TEMP TABLE a_cov AS SELECT c.device_id, greatest(c.s, a.s) AS s, least(c.e, a.e) AS e
        FROM cover c JOIN alert_isl a ON c.device_id = a.device_id AND a.s < c.e AND a.e > c.s""",
        """CREATE TEMP TABLE a_up AS SELECT u.device_id, greatest(u.s, a.s) AS s, least(u.e, a.e) AS e
        FROM up u JOIN alert_isl a ON u.device_id = a.device_id AND a.s < u.e AND a.e > u.s""",
        "CREATE TEMP TABLE a_cov_ms AS " + _overlap("a_cov", "win", "w.device_id, w.day_idx", "ms"),
        "CREATE TEMP TABLE a_up_ms AS " + _overlap("a_up", "win", "w.device_id, w.day_idx", "ms"),
        f"""CREATE TEMP TABLE device_day AS
        SELECT t.day, t.device_id, d.site, d.lat, d.lon, s.firmware_version,
          (t.e1 - t.e0) / 1000.0 AS eligible_s, s.up_ms / 1000.0 AS up_s,
          s.down_ms / 1000.0 AS down_s, s.unknown_ms / 1000.0 AS unknown_s,
          CASE WHEN s.up_ms + s.down_ms > 0 THEN s.up_ms / (s.up_ms + s.down_ms) END AS device_uptime,
          CASE WHEN c.slots_observed > 0
               THEN least(c.slots_with_reading / c.slots_observed, 1.0) END AS connectivity_ratio,
          c.slots_observed, c.slots_with_reading, coalesce(r.readings, 0) AS readings,
          coalesce(ac.alert_count, 0) AS alert_count,
          (coalesce(acm.ms, 0) - coalesce(aum.ms, 0)) / 1000.0 AS alert_down_s,
          d.in_registry,
          (s.up_ms / 1000.0 + s.down_ms / 1000.0 > 0 AND
           s.up_ms / (s.up_ms + s.down_ms) >= {target}) AS meets_target
        FROM targets t
        JOIN (SELECT device_id, day_idx, sum(up_ms) AS up_ms, sum(down_ms) AS down_ms,
                     sum(unknown_ms) AS unknown_ms, arg_max(firmware_version, ws) AS firmware_version
              FROM seg_times GROUP BY ALL) s USING (device_id, day_idx)
        JOIN devices d USING (device_id)
        LEFT JOIN conn c USING (device_id, day_idx)
        LEFT JOIN day_readings r USING (device_id, day_idx)
        LEFT JOIN alert_counts ac USING (device_id, day_idx)
        LEFT JOIN a_cov_ms acm USING (device_id, day_idx)
        LEFT JOIN a_up_ms aum USING (device_id, day_idx)""",
        """CREATE TEMP TABLE device_firmware_day AS
        SELECT t.day, s.device_id, s.firmware_version, sum(s.eligible_ms) / 1000.0 AS eligible_s,
          sum(s.up_ms) / 1000.0 AS up_s, sum(s.down_ms) / 1000.0 AS down_s,
          sum(s.unknown_ms) / 1000.0 AS unknown_s
        FROM seg_times s JOIN targets t USING (device_id, day_idx) GROUP BY ALL""",
        """CREATE TEMP TABLE fleet_day AS
        SELECT day, count(DISTINCT device_id) AS devices, sum(eligible_s) AS eligible_s,
          sum(up_s) AS up_s, sum(down_s) AS down_s, sum(unknown_s) AS unknown_s,
          CASE WHEN sum(up_s) + sum(down_s) > 0 THEN sum(up_s) / (sum(up_s) + sum(down_s)) END
            AS fleet_uptime,
          count(*) FILTER (WHERE meets_target) AS devices_meeting_target
        FROM device_day GROUP BY day""",
        """CREATE TEMP TABLE firmware_day AS
        SELECT day, firmware_version, count(DISTINCT device_id) AS devices, sum(up_s) AS up_s,
          sum(down_s) AS down_s,
          CASE WHEN sum(up_s) + sum(down_s) > 0 THEN sum(up_s) / (sum(up_s) + sum(down_s)) END
            AS device_uptime
        FROM device_firmware_day GROUP BY ALL""",
        """CREATE TEMP TABLE site_day AS
        SELECT day, site, count(DISTINCT device_id) AS devices, sum(up_s) AS up_s,
          sum(down_s) AS down_s,
          CASE WHEN sum(up_s) + sum(down_s) > 0 THEN sum(up_s) / (sum(up_s) + sum(down_s)) END
            AS device_uptime
        FROM device_day GROUP BY ALL""",
    ]


def run(
    files: Sequence[str],
    batches: pa.Table,
    registry: pa.Table,
    firmware: pa.Table,
    alerts: pa.Table,
    days: Sequence[date],
    gap_k: float = 2.5,
    target: float = 0.99,
) -> dict[str, pa.Table]:
    """Run the script; geohash cells are left out (DuckDB has no geohash function built in)."""
    con = duckdb.connect()
    con.register("batches", batches)
    con.register("registry", registry)
    con.register("firmware", firmware)
    con.register("alerts", alerts)
    for stmt in script(files, days, gap_k, target):
        con.execute(stmt)
    out = {
        n: con.sql(f"SELECT * FROM {n}").to_arrow_table()
        for n in ("device_day", "device_firmware_day", "fleet_day", "firmware_day", "site_day")
    }
    con.close()
    return out
