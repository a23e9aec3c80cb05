"""Buffer rows → Arrow: the fast read (ADBC SQLite driver when installed), metrics, geohash.

The ADBC driver hands SQLite rows over as Arrow columns (about 2x the rows per second of
the ``sqlite3`` cursor, which builds a Python object per cell); without it the cursor
path gives the same table. ADBC infers a column's type from the first rows it sees, so
the query starts with a typed sentinel row (dropped afterwards): a column that is NULL
for the first thousand readings would otherwise be taken for an integer column.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from schemas.batch import BATCH_SCHEMA, RECORD_OBSERVATION, RECORD_READING

from .errors import StoreError

log = logging.getLogger(__name__)

GEOHASH_PRECISION = 6
_COLS = (
    "id", "ts_ms", "received_ms", "seq", "device_id", "kind", "site", "state", "event_type",
    "fw", "lat", "lon", "metrics", "metrics_null", "detail",
)  # fmt: skip
_SELECT = (
    "SELECT id, ts_ms, received_ms, seq, device_id, kind, site, state, event_type, fw,"
    " CAST(lat AS REAL), CAST(lon AS REAL), coalesce(metrics, '{}') || char(10),"
    " metrics IS NULL, detail FROM readings WHERE id BETWEEN %d AND %d"
)
_SENTINEL = "SELECT -1, 0, 0, 0, '', '', '', '', '', '', 0.5, 0.5, '', 0, '' UNION ALL "
_RAW_SCHEMA = pa.schema(
    [
        ("id", pa.int64()), ("ts_ms", pa.int64()), ("received_ms", pa.int64()),
        ("seq", pa.int64()), ("device_id", pa.string()), ("kind", pa.string()),
        ("site", pa.string()), ("state", pa.string()), ("event_type", pa.string()),
        ("fw", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()),
        ("metrics", pa.string()), ("metrics_null", pa.int64()), ("detail", pa.string()),
    ]
)  # fmt: skip
_TS = pa.timestamp("ms", tz="UTC")
_METRICS = BATCH_SCHEMA.field("metrics").type


def adbc_available() -> bool:
    try:
        import adbc_driver_sqlite.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def read_readings(
    db_path: Path, conn: sqlite3.Connection, first_id: int, last_id: int, *, use_adbc: bool = True
) -> pa.Table:
    """Reading rows with ``first_id <= id <= last_id`` as an Arrow table (``_RAW_SCHEMA``)."""
    sql = _SELECT % (int(first_id), int(last_id))
    if use_adbc and adbc_available():
        import adbc_driver_sqlite.dbapi as adbc

        try:
            with adbc.connect(str(db_path)) as aconn, aconn.cursor() as cur:
                # bigger Arrow batches than the default 1024 rows: fewer, cheaper hand-overs
                cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "65536"})
                cur.execute(_SENTINEL + sql)
                table = cur.fetch_arrow_table().slice(1)
            return pa.Table.from_arrays(
                [c.cast(f.type) for c, f in zip(table.columns, _RAW_SCHEMA, strict=True)],
                schema=_RAW_SCHEMA,
            )
        except Exception as exc:  # the driver's own error classes: fall back, never fail here
            log.warning("ADBC read of readings %d..%d failed (%s); using sqlite3", first_id,
                        last_id, exc)  # fmt: skip
    try:
        rows = conn.execute(sql).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read readings {first_id}..{last_id}: {exc}") from exc
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in _COLS]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(cols, _RAW_SCHEMA, strict=True)],
        schema=_RAW_SCHEMA,
    )


def metrics_map(texts: pa.ChunkedArray, is_null: pa.ChunkedArray) -> pa.Array:
    """JSON objects (one per row, each ending in a newline) → ``map<string, double>``.

    pyarrow's JSON reader parses the whole column at once into a struct (one field per
    metric name); the struct is then folded into a map with numpy.
    """
    n = len(texts)
    null_mask = pa.array(is_null.to_numpy() != 0) if n else pa.array([], pa.bool_())
    if n == 0:
        return pa.array([], type=_METRICS)
    large = texts.combine_chunks().cast(pa.large_string())
    offsets = np.frombuffer(large.buffers()[1], dtype=np.int64)[large.offset : large.offset + n + 1]
    data = large.buffers()[2]
    body = data.slice(int(offsets[0]), int(offsets[-1] - offsets[0])) if data is not None else b""
    try:
        struct = pj.read_json(pa.BufferReader(body)) if len(body) else pa.table({})
        if struct.num_rows != n:
            raise ValueError(f"{struct.num_rows} objects for {n} rows")
        names = struct.column_names
        values = np.column_stack(
            [pc.fill_null(c.cast(pa.float64()), np.nan).to_numpy() for c in struct.columns]
        ) if names else np.zeros((n, 0))  # fmt: skip
        valid = np.column_stack(
            [c.is_valid().to_numpy(zero_copy_only=False) for c in struct.columns]
        ) if names else np.zeros((n, 0), dtype=bool)  # fmt: skip
    except (pa.ArrowException, ValueError, TypeError) as exc:
        # nested values or odd numbers the fast reader will not fold: slow but exact
        log.debug("fast metrics parse failed (%s); parsing row by row", exc)
        return _metrics_slow(large, null_mask)
    counts = valid.sum(axis=1)
    offs = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offs[1:])
    rows, cols = np.nonzero(valid)
    keys = pa.array(names, pa.string()).take(pa.array(cols, pa.int64()))
    items = pa.array(values[rows, cols], pa.float64())
    return pa.MapArray.from_arrays(pa.array(offs), keys, items, type=_METRICS, mask=null_mask)


def _metrics_slow(texts: pa.Array, null_mask: pa.Array) -> pa.Array:
    out: list[list[tuple[str, float]] | None] = []
    for text, null in zip(texts.to_pylist(), null_mask.to_pylist(), strict=True):
        if null:
            out.append(None)
            continue
        obj = json.loads(text)
        out.append([(k, float(v)) for k, v in obj.items() if isinstance(v, int | float)])
    return pa.array(out, type=_METRICS)


def geohashes(
    lat: pa.ChunkedArray,
    lon: pa.ChunkedArray,
    device: pa.ChunkedArray,
    registry: Mapping[str, tuple[float, float]],
    precision: int = GEOHASH_PRECISION,
) -> pa.Array:
    """Geohash of each row: the message's lat/lon, else the registry's, else null."""
    import pygeohash

    n = len(lat)
    la = pc.fill_null(lat, np.nan).to_numpy()
    lo = pc.fill_null(lon, np.nan).to_numpy()
    out = np.full(n, None, dtype=object)
    own = ~(np.isnan(la) | np.isnan(lo))
    if own.any():
        # devices mostly stay put: encode each distinct position once
        pairs = la[own] + 1j * lo[own]
        uniq, inverse = np.unique(pairs, return_inverse=True)
        codes = np.array(
            [pygeohash.encode(float(p.real), float(p.imag), precision=precision) for p in uniq],
            dtype=object,
        )
        out[own] = codes[inverse]
    if registry and not own.all():
        enc = pc.dictionary_encode(device.combine_chunks())
        words = enc.dictionary.to_pylist()
        by_code = np.array(
            [pygeohash.encode(*registry[w], precision=precision) if w in registry else None
             for w in words] + [None],
            dtype=object,
        )  # fmt: skip
        idx = enc.indices.fill_null(len(words)).to_numpy(zero_copy_only=False)
        out[~own] = by_code[idx[~own]]
    return pa.array(out, pa.string())


def to_batch_rows(
    raw: pa.Table, gateway_id: str, registry: Mapping[str, tuple[float, float]]
) -> pa.Table:
    """Raw reading rows → BATCH_SCHEMA rows (``record_type = 'reading'``)."""
    n = raw.num_rows
    columns = {
        "record_type": pa.array(np.full(n, RECORD_READING, dtype=object), pa.string()),
        "gateway_id": pa.array(np.full(n, gateway_id, dtype=object), pa.string()),
        "device_id": raw["device_id"],
        "site": raw["site"],
        "kind": raw["kind"],
        "ts": raw["ts_ms"].cast(_TS),
        "seq": raw["seq"],
        "received_at": raw["received_ms"].cast(_TS),
        "end_ts": pa.nulls(n, _TS),
        "state": raw["state"],
        "event_type": raw["event_type"],
        "fw": raw["fw"],
        "lat": raw["lat"],
        "lon": raw["lon"],
        "geohash": geohashes(raw["lat"], raw["lon"], raw["device_id"], registry),
        "metrics": metrics_map(raw["metrics"], raw["metrics_null"]),
        "detail": raw["detail"],
    }
    return pa.Table.from_arrays([columns[f.name] for f in BATCH_SCHEMA], schema=BATCH_SCHEMA)


def observation_rows(gateway_id: str, pieces: Sequence[tuple[int, int]]) -> pa.Table:
    """Observation pieces ``[start_ms, end_ms)`` → BATCH_SCHEMA rows."""
    n = len(pieces)
    cols = {f.name: pa.nulls(n, f.type) for f in BATCH_SCHEMA}
    cols["record_type"] = pa.array([RECORD_OBSERVATION] * n, pa.string())
    cols["gateway_id"] = pa.array([gateway_id] * n, pa.string())
    cols["ts"] = pa.array([s for s, _ in pieces], pa.int64()).cast(_TS)
    cols["end_ts"] = pa.array([e for _, e in pieces], pa.int64()).cast(_TS)
    return pa.Table.from_arrays([cols[f.name] for f in BATCH_SCHEMA], schema=BATCH_SCHEMA)
