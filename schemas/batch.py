"""Arrow schema of the Parquet batches an agent uploads (DESIGN §5), with its version.

One file holds two record types, told apart by ``record_type``:

- ``reading``: one accepted message (dedup key ``device_id, kind, ts, seq``);
- ``observation``: an interval ``[ts, end_ts)`` when the agent was connected and
  subscribed (DESIGN §4 "observed"); device columns are null.
"""

from __future__ import annotations

import re

import pyarrow as pa

SCHEMA_VERSION = "1"
META_SCHEMA_VERSION = b"fleetpulse.schema_version"
META_GATEWAY_ID = b"fleetpulse.gateway_id"
META_BATCH_SEQ = b"fleetpulse.batch_seq"

RECORD_READING = "reading"
RECORD_OBSERVATION = "observation"

_TS = pa.timestamp("ms", tz="UTC")

BATCH_SCHEMA = pa.schema(
    [
        pa.field("record_type", pa.string(), nullable=False),
        pa.field("gateway_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string()),
        pa.field("site", pa.string()),
        pa.field("kind", pa.string()),
        # device time as sent (or interval start for an observation)
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
)

# Batch ids name files on both sides: letters, digits, '-' and '_' only (DESIGN §5).
BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SEQ_WIDTH = 10


def batch_id(gateway_id: str, sequence: int) -> str:
    """``<gateway_id>-<zero-padded sequence>``."""
    return f"{gateway_id}-{sequence:0{SEQ_WIDTH}d}"


def batch_metadata(gateway_id: str, sequence: int) -> dict[bytes, bytes]:
    """Parquet key-value metadata every batch carries."""
    return {
        META_SCHEMA_VERSION: SCHEMA_VERSION.encode(),
        META_GATEWAY_ID: gateway_id.encode(),
        META_BATCH_SEQ: str(sequence).encode(),
    }


# Writer options both sides agree on: zstd, page checksums, statistics for min/max ts.
PARQUET_WRITE_OPTIONS = {
    "compression": "zstd",
    "write_page_checksum": True,
    "write_statistics": True,
}
