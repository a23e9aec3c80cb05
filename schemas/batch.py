"""Arrow schema of the Parquet batches an agent uploads (DESIGN §5), with its version.

One file holds up to three record types, told apart by ``record_type``:

- ``reading``: one accepted message (dedup key ``device_id, kind, ts, seq``);
- ``observation``: an interval ``[ts, end_ts)`` when the agent was connected and
  subscribed (DESIGN §4 "observed"); device columns are null;
- ``kpi`` (schema version 2): one row of the agent's local KPI view (DESIGN §4, the
  ``kpis`` table of the agent's buffer) for ``device_id`` and UTC ``day``: ``ts`` is the
  day's start, ``site`` the device's site, ``computed_at`` when the agent's DAG computed
  it (the gateway's clock: informative only), the figures in the KPI columns. An agent
  ships a row again only when its figures changed; the latest copy of a
  (gateway, device, day) is the one in the batch with the highest sequence.

Versions: ``"1"`` is ``BATCH_SCHEMA_V1`` (readings and observations); ``"2"`` is
``BATCH_SCHEMA``, the v1 columns followed by the nullable KPI columns, and adds the
``kpi`` record type. Agents write version 2; central reads both (a v1 file has no KPI
columns and no ``kpi`` rows). Columns a record type does not use are null.
"""

from __future__ import annotations

import re

import pyarrow as pa

SCHEMA_VERSION = "2"
META_SCHEMA_VERSION = b"fleetpulse.schema_version"
META_GATEWAY_ID = b"fleetpulse.gateway_id"
META_BATCH_SEQ = b"fleetpulse.batch_seq"

RECORD_READING = "reading"
RECORD_OBSERVATION = "observation"
RECORD_KPI = "kpi"

_TS = pa.timestamp("ms", tz="UTC")

_V1_FIELDS = [
    pa.field("record_type", pa.string(), nullable=False),
    pa.field("gateway_id", pa.string(), nullable=False),
    pa.field("device_id", pa.string()),
    pa.field("site", pa.string()),
    pa.field("kind", pa.string()),
    # device time as sent (interval start for an observation, day start for a kpi row)
    pa.field("ts", _TS, nullable=False),
    pa.field("seq", pa.int64()),
    pa.field("received_at", _TS),
    # interval end for an observation
    pa.field("end_ts", _TS),
    pa.field("state", pa.string()),
    pa.field("event_type", pa.string()),
    pa.field("fw", pa.string()),
    pa.field("lat", pa.float64()),
    pa.field("lon", pa.float64()),
    pa.field("geohash", pa.string()),
    pa.field("metrics", pa.map_(pa.string(), pa.float64())),
    pa.field("detail", pa.string()),
]
# v2: the agent's local KPI rows (agent/kpi.py KPI_SCHEMA), null for other record types
KPI_FIELDS = [
    pa.field("day", pa.date32()),
    pa.field("eligible_s", pa.float64()),
    pa.field("up_s", pa.float64()),
    pa.field("down_s", pa.float64()),
    pa.field("unknown_s", pa.float64()),
    pa.field("device_uptime", pa.float64()),
    pa.field("connectivity_ratio", pa.float64()),
    pa.field("slots_counted", pa.int64()),
    pa.field("slots_holding", pa.int64()),
    pa.field("computed_at", _TS),
]

BATCH_SCHEMA_V1 = pa.schema(_V1_FIELDS)
BATCH_SCHEMA = pa.schema(_V1_FIELDS + KPI_FIELDS)
# What central accepts: schema and record types per version.
BATCH_SCHEMAS = {"1": BATCH_SCHEMA_V1, "2": BATCH_SCHEMA}
RECORD_TYPES = {
    "1": frozenset({RECORD_READING, RECORD_OBSERVATION}),
    "2": frozenset({RECORD_READING, RECORD_OBSERVATION, RECORD_KPI}),
}

# Batch ids name files on both sides: letters, digits, '-' and '_' only (DESIGN §5).
BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SEQ_WIDTH = 10


def batch_id(gateway_id: str, sequence: int) -> str:
    """``<gateway_id>-<zero-padded sequence>``."""
    return f"{gateway_id}-{sequence:0{SEQ_WIDTH}d}"


def batch_metadata(
    gateway_id: str, sequence: int, version: str = SCHEMA_VERSION
) -> dict[bytes, bytes]:
    """Parquet key-value metadata every batch carries (``version``: of ``BATCH_SCHEMAS``)."""
    return {
        META_SCHEMA_VERSION: version.encode(),
        META_GATEWAY_ID: gateway_id.encode(),
        META_BATCH_SEQ: str(sequence).encode(),
    }


# Writer options both sides agree on: zstd, page checksums, statistics for min/max ts.
PARQUET_WRITE_OPTIONS = {
    "compression": "zstd",
    "write_page_checksum": True,
    "write_statistics": True,
}
