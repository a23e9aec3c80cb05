"""Bronze: every gateway's batch rows, checked, normalised and deduplicated (Ibis only).

Times become epoch milliseconds here so that both engines do integer arithmetic on them;
event time follows ``schemas.event_time_ms`` (receive time when ``ts`` is > 300 s ahead).
Rows that break the batch contract go to quarantine with the reason, never dropped.
The agents' ``kpi`` rows (schema v2) are checked here too and kept apart (``agent_kpis``):
they never enter the readings or observations central computes its own KPIs from.
"""

from __future__ import annotations

import ibis
import ibis.expr.types as ir
from ibis import _

from schemas import KINDS, NO_SEQ, SKEW_LIMIT_MS
from schemas.batch import RECORD_KPI, RECORD_OBSERVATION, RECORD_READING

# Among copies of one reading the first by these columns is kept: the earliest receipt,
# then the smallest gateway id (KPI decision), then the rest only to make the order total.
DEDUP_ORDER = ("recv_ms", "gateway_id", "batch_id", "site", "state", "event_type")
DEDUP_KEY = ("device_id", "kind", "ts_ms", "seq")

# Rows set aside, from batches or other sources, all nullable so the sources can be unioned.
QUARANTINE_SCHEMA = ibis.schema(
    {
        "source": "string",
        "batch_id": "string",
        "gateway_id": "string",
        "record_type": "string",
        "device_id": "string",
        "kind": "string",
        "ts": "timestamp('UTC')",
        "ts_ms": "int64",
        "seq": "int64",
        "reason": "string",
        "ingested_at": "timestamp('UTC')",
    }
)


def epoch_ms(col: ir.TimestampValue) -> ir.IntegerValue:
    """Milliseconds since 1970 in UTC, the same on DuckDB and Spark.

    Whole seconds (floored: DuckDB's epoch has a fraction, Spark's has none) plus the
    millisecond of the second. ``delta(epoch, "millisecond")`` gives the same numbers but
    DuckDB evaluates it as calendar arithmetic, 14x slower at 10M rows; casting a
    timestamp to an integer fails on DuckDB.
    """
    return col.epoch_seconds().floor().cast("int64") * 1000 + col.millisecond()


def batch_rows(landed: ir.Table, batches: ir.Table) -> ir.Table:
    """Landed rows with their lineage: ``batch_id`` (from the file name) and ``ingested_at``."""
    if "batch_id" not in landed.columns:
        landed = landed.mutate(batch_id=landed.filename.re_extract(r"([^/\\]+)\.parquet$", 1))
    if "filename" in landed.columns:
        landed = landed.drop("filename")
    b = batches.select("batch_id", "ledger_gateway_id", "ingested_at")
    return landed.inner_join(b, "batch_id")


def normalized(batch_rows: ir.Table) -> ir.Table:
    """Rows with epoch-ms times, event time, the skewed flag, and the reason if invalid."""
    t = batch_rows
    ts_ms = epoch_ms(t.ts)
    recv_ms = epoch_ms(t.received_at.fill_null(t.ts))
    t = t.mutate(
        ts_ms=ts_ms,
        recv_ms=recv_ms,
        end_ms=epoch_ms(t.end_ts),
        seq=t.seq.fill_null(NO_SEQ),
    )
    skewed = (t.ts_ms - t.recv_ms) > SKEW_LIMIT_MS
    t = t.mutate(
        skewed=skewed,
        event_ms=ibis.ifelse(skewed, t.recv_ms, t.ts_ms),
        is_offline=((t.kind == "status") & (t.state == "offline")).cast("int8"),
    )
    reading = t.record_type == RECORD_READING
    observation = t.record_type == RECORD_OBSERVATION
    kpi = t.record_type == RECORD_KPI
    seconds = [t.eligible_s, t.up_s, t.down_s, t.unknown_s]
    reason = ibis.cases(
        (
            t.gateway_id != t.ledger_gateway_id,
            "gateway_id differs from the gateway that uploaded the batch",
        ),
        (
            ~(reading | observation | kpi),
            "record_type is neither 'reading' nor 'observation' nor 'kpi'",
        ),
        (kpi & t.device_id.isnull(), "kpi row without device_id"),
        (kpi & t.day.isnull(), "kpi row without day"),
        (kpi & (t.ts.date() != t.day), "kpi row whose ts is not in its day"),
        (
            kpi & ibis.or_(*(c.isnull() | (c < 0) for c in seconds)),
            "kpi row with a null or negative eligible_s, up_s, down_s or unknown_s",
        ),
        (kpi & ~_unit(t.device_uptime), "kpi row whose device_uptime is outside [0, 1]"),
        (
            kpi & ~_unit(t.connectivity_ratio),
            "kpi row whose connectivity_ratio is outside [0, 1]",
        ),
        (reading & t.device_id.isnull(), "reading without device_id"),
        (reading & ~t.kind.isin(list(KINDS)), "reading kind is not telemetry, status or event"),
        (
            reading & (t.kind == "status") & ~t.state.isin(["online", "offline"]),
            "status reading whose state is not 'online' or 'offline'",
        ),
        (observation & t.end_ts.isnull(), "observation without end_ts"),
        (observation & (t.end_ms < t.ts_ms), "observation ends before it starts"),
        else_=ibis.null("string"),
    )
    return t.mutate(reason=reason)


def _unit(x: ir.FloatingValue) -> ir.BooleanValue:
    """Null or within [0, 1] (NaN is not: it compares above every number on both engines)."""
    return x.isnull() | ((x >= 0) & (x <= 1))


def quarantine_rows(normalized: ir.Table) -> ir.Table:
    """Rows that break the batch contract, with the reason (published as gold quarantine)."""
    t = normalized.filter(normalized.reason.notnull())
    return t.select(
        source=ibis.literal("batch"),
        batch_id=t.batch_id,
        gateway_id=t.gateway_id,
        record_type=t.record_type,
        device_id=t.device_id,
        kind=t.kind,
        ts=t.ts,
        ts_ms=t.ts_ms,
        seq=t.seq,
        reason=t.reason,
        ingested_at=t.ingested_at,
    ).cast(QUARANTINE_SCHEMA)


def valid_readings(normalized: ir.Table) -> ir.Table:
    """Valid reading rows, every copy (each gateway's own view)."""
    t = normalized
    return t.filter((t.record_type == RECORD_READING) & t.reason.isnull())


def gateway_readings(valid_readings: ir.Table) -> ir.Table:
    """(gateway, device, event time) of every reading a gateway received: its "observed" view."""
    t = valid_readings
    return t.select("gateway_id", "device_id", "event_ms").distinct()


def bronze(valid_readings: ir.Table) -> ir.Table:
    """One row per reading across all gateways, with lineage columns ``batch_id, ingested_at``."""
    w = ibis.window(group_by=list(DEDUP_KEY), order_by=list(DEDUP_ORDER))
    t = valid_readings.mutate(copy_rank=ibis.row_number().over(w)).filter(_.copy_rank == 0)
    # What the KPIs and the lineage need; the payload columns stay in the landed files.
    return t.select(
        "device_id",
        "site",
        "kind",
        "ts_ms",
        "seq",
        "event_ms",
        "skewed",
        "is_offline",
        "gateway_id",
        "batch_id",
        "ingested_at",
    )


def observations(normalized: ir.Table) -> ir.Table:
    """Gateways' connected-and-subscribed intervals ``[s, e)`` in epoch ms."""
    t = normalized
    t = t.filter((t.record_type == RECORD_OBSERVATION) & t.reason.isnull() & (t.end_ms > t.ts_ms))
    return t.select("gateway_id", s=t.ts_ms.cast("float64"), e=t.end_ms.cast("float64")).distinct()


def agent_kpis(normalized: ir.Table) -> ir.Table:
    """Valid ``kpi`` rows: each gateway's local view of a device-day, as it shipped it."""
    t = normalized
    t = t.filter((t.record_type == RECORD_KPI) & t.reason.isnull())
    return t.select(
        "gateway_id",
        "day",
        "device_id",
        "site",
        "eligible_s",
        "up_s",
        "down_s",
        "unknown_s",
        "device_uptime",
        "connectivity_ratio",
        "computed_at",
        "batch_id",
    )


def reconciliation(normalized: ir.Table, bronze: ir.Table, batches: ir.Table) -> ir.Table:
    """Per batch: ledger rows against rows read, kept, duplicate, observation, kpi, quarantined."""
    n = normalized
    valid_reading = (n.record_type == RECORD_READING) & n.reason.isnull()
    per_batch = n.group_by("batch_id").aggregate(
        rows_read=n.count(),
        valid_readings=valid_reading.sum(),
        observation_rows=((n.record_type == RECORD_OBSERVATION) & n.reason.isnull()).sum(),
        kpi_rows=((n.record_type == RECORD_KPI) & n.reason.isnull()).sum(),
        quarantined_rows=n.reason.notnull().sum(),
    )
    kept = bronze.group_by("batch_id").aggregate(kept_rows=bronze.count())
    b = batches.select("batch_id", "ledger_rows")
    out = b.left_join(per_batch, "batch_id").left_join(kept, "batch_id")
    kept_rows = out.kept_rows.fill_null(0)
    return out.select(
        "batch_id",
        "ledger_rows",
        rows_read=out.rows_read.fill_null(0),
        kept_rows=kept_rows,
        # a valid reading not kept lost the dedup to a copy from another upload
        duplicate_rows=out.valid_readings.fill_null(0) - kept_rows,
        observation_rows=out.observation_rows.fill_null(0),
        kpi_rows=out.kpi_rows.fill_null(0),
        quarantined_rows=out.quarantined_rows.fill_null(0),
    )
