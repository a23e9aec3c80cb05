"""Buffer rows → Arrow for export: a lean read through ``sqlite3``, metrics, geohash.

The ``sqlite3`` cursor builds a Python object per cell, which is what an export costs, so
a batch reads only the columns that hold a value somewhere in its range (telemetry has no
``state``, ``event_type``, ``detail``, often no position): one cheap ``count()`` scan in
SQLite saves up to half the cells. The ADBC SQLite driver would hand over Arrow columns
directly, but it links its own copy of SQLite: two copies in one process break each
other's POSIX locks (SQLite's "how to corrupt" §2.2.1; we saw ``disk I/O error`` on the
ingest connection in a test), so it is not used in the agent process.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from schemas.batch import BATCH_SCHEMA, RECORD_OBSERVATION, RECORD_READING

from .errors import StoreError

log = logging.getLogger(__name__)

GEOHASH_PRECISION = 6
# Rows turned into Python objects at once while reading a batch (bounds peak memory).
READ_CHUNK = 16_384
_RAW_SCHEMA = pa.schema(
    [
        ("ts_ms", pa.int64()), ("received_ms", pa.int64()), ("seq", pa.int64()),
        ("device_id", pa.string()), ("kind", pa.string()), ("site", pa.string()),
        ("state", pa.string()), ("event_type", pa.string()), ("fw", pa.string()),
        ("lat", pa.float64()), ("lon", pa.float64()), ("metrics", pa.string()),
        ("detail", pa.string()),
    ]
)  # fmt: skip
# columns that are NULL for many readings: read only when the range holds a value
_SPARSE = ("state", "event_type", "fw", "lat", "lon", "metrics", "detail")
_TS = pa.timestamp("ms", tz="UTC")
_METRICS = BATCH_SCHEMA.field("metrics").type


def read_readings(conn: sqlite3.Connection, first_id: int, last_id: int) -> pa.Table:
    """Reading rows with ``first_id <= id <= last_id`` as an Arrow table (``_RAW_SCHEMA``)."""
    rng = (int(first_id), int(last_id))
    try:
        present = conn.execute(
            "SELECT "
            + ", ".join(f"count({c})" for c in _SPARSE)
            + " FROM readings WHERE id BETWEEN ? AND ?",
            rng,
        ).fetchone()
        wanted = [f.name for f in _RAW_SCHEMA if f.name not in _SPARSE] + [
            c for c, n in zip(_SPARSE, present, strict=True) if n
        ]
        sql = f"SELECT {', '.join(wanted)} FROM readings WHERE id BETWEEN ? AND ? ORDER BY id"
        cur = conn.execute(sql, rng)
        # chunks: the Python objects of one chunk at a time, not of the whole batch
        chunks = []
        while rows := cur.fetchmany(READ_CHUNK):
            columns = dict(zip(wanted, zip(*rows, strict=True), strict=True))
            n = len(rows)
            arrays = []
            for f in _RAW_SCHEMA:
                values = columns.get(f.name)
                arrays.append(pa.nulls(n, f.type) if values is None else pa.array(values, f.type))
            chunks.append(pa.RecordBatch.from_arrays(arrays, schema=_RAW_SCHEMA))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read readings {first_id}..{last_id}: {exc}") from exc
    return pa.Table.from_batches(chunks, schema=_RAW_SCHEMA).combine_chunks()


def metrics_map(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """JSON object text per row (null allowed) → ``map<string, double>``.

    pyarrow's JSON reader parses the whole column at once into a struct (one field per
    metric name); numpy then folds the struct into a map.
    """
    n = len(texts)
    if n == 0:
        return pa.array([], type=_METRICS)
    null_mask = texts.is_null()
    if isinstance(null_mask, pa.ChunkedArray):
        null_mask = null_mask.combine_chunks()
    if texts.null_count == n:
        return pa.nulls(n, _METRICS)
    body = "\n".join(t if t is not None else "{}" for t in texts.to_pylist()).encode()
    try:
        struct = pj.read_json(pa.BufferReader(body))
        if struct.num_rows != n:
            raise ValueError(f"{struct.num_rows} objects for {n} rows")
        names = struct.column_names
        k = len(names)
        values = np.zeros((n, k))
        valid = np.zeros((n, k), dtype=bool)
        for j, col in enumerate(struct.columns):
            values[:, j] = pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy()
            valid[:, j] = col.is_valid().to_numpy(zero_copy_only=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        # nested values or odd numbers the fast reader will not fold: slow but exact
        log.debug("fast metrics parse failed (%s); parsing row by row", exc)
        return _metrics_slow(texts, null_mask)
    counts = valid.sum(axis=1)
    offs = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offs[1:])
    rows, cols = np.nonzero(valid)
    keys = pa.array(names, pa.string()).take(pa.array(cols, pa.int64()))
    items = pa.array(values[rows, cols], pa.float64())
    return pa.MapArray.from_arrays(pa.array(offs), keys, items, type=_METRICS, mask=null_mask)


def _metrics_slow(texts: pa.ChunkedArray | pa.Array, null_mask: pa.Array) -> pa.Array:
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
        "metrics": metrics_map(raw["metrics"]),
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
