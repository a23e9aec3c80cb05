"""Buffer schema v4: metrics packed at ingest (names + float64 values) export to the very
``map<string, double>`` the JSON text of before gave, and a v3 buffer is upgraded in place
with its JSON rows exported as before, alone or in one batch with packed rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from agent import buffer as buffer_mod
from agent.arrowio import metrics_column, metrics_map, packed_map
from agent.buffer import METRIC_SEP, SCHEMA_VERSION, Buffer, pack_metrics, reading_row
from agent.errors import StoreError
from agent.export import export_pending
from schemas import Reading, decode
from tests.agent_upload_support import T0_MS, add_readings, agent_config, cfg_of
from tests.agent_upload_support import reading_row as json_row

# what devices send: the usual set, another device's set in another order, a subset,
# signed zero, extremes, a name that is not ASCII, an empty name, no metrics at all
BODIES: list[dict[str, float] | None] = [
    {"temp": 21.5, "rssi": -61.0, "battery": 3.9},
    {"humidity": 40.25, "temp": -0.0},
    {"rssi": -70.0, "temp": 19.125, "battery": 4.0},
    None,
    {"temp": 1e300, "rssi": 5e-324, "battery": -2.2250738585072014e-308},
    {"température": 2.0},
    {"": 3.0, "temp": 0.1},
    {"temp": 9007199254740993, "rssi": -0.0},  # an int past 2**53: float() as JSON does
    {"battery": 3.3},
]


def _messages() -> list[Reading]:
    out = []
    for i, metrics in enumerate(BODIES * 3):
        body: dict[str, object] = {"device_id": f"dev-{i % 4}", "ts": T0_MS + i, "seq": i}
        if metrics is not None:
            body["metrics"] = metrics
        topic = f"fleet/site-a/dev-{i % 4}/telemetry"
        out.append(decode(topic, json.dumps(body).encode(), T0_MS + i + 5))
    # not from the wire: an empty object and a name holding the separator keep JSON text
    base = {"device_id": "dev-9", "site": "site-a", "kind": "telemetry", "received_ms": T0_MS}
    out.append(Reading(ts_ms=T0_MS + 100, seq=100, metrics={}, **base))  # type: ignore[arg-type]
    out.append(Reading(ts_ms=T0_MS + 101, seq=101, metrics={f"a{METRIC_SEP}b": 1.0, "c": 2.0},
                       **base))  # type: ignore[arg-type]  # fmt: skip
    return out


def _old_texts(readings: list[Reading]) -> pa.Array:
    """The ``metrics`` column ingest stored before v4."""
    return pa.array(
        [None if r.metrics is None else json.dumps(r.metrics, separators=(",", ":"))
         for r in readings],
        pa.string(),
    )  # fmt: skip


def _new_columns(readings: list[Reading]) -> tuple[pa.Array, pa.Array, pa.Array]:
    rows = [reading_row(r) for r in readings]
    return (pa.array([r[11] for r in rows], pa.string()),
            pa.array([r[13] for r in rows], pa.string()),
            pa.array([r[14] for r in rows], pa.binary()))  # fmt: skip


def _same_maps(a: pa.Array, b: pa.Array) -> None:
    assert a.type == b.type
    assert a.to_pylist() == b.to_pylist()
    assert a.equals(b)
    # bit for bit, so -0.0 stays -0.0
    va, vb = a.items.to_numpy(), b.items.to_numpy()
    assert np.array_equal(va.view(np.int64), vb.view(np.int64))


def test_pack_metrics_keeps_order_and_bits_and_falls_back() -> None:
    keys, vals = pack_metrics({"b": -0.0, "a": 1.5}) or ("", b"")
    assert keys == f"b{METRIC_SEP}a"
    assert vals == np.array([-0.0, 1.5], "<f8").tobytes()
    assert pack_metrics({}) is None
    assert pack_metrics({f"x{METRIC_SEP}y": 1.0}) is None
    assert pack_metrics({"": 2.0}) == ("", np.array([2.0], "<f8").tobytes())
    # the fallbacks are stored as JSON text, with no packed columns
    r = Reading(device_id="d", site="s", kind="telemetry", ts_ms=1, seq=1, received_ms=1,
                metrics={})  # fmt: skip
    assert reading_row(r)[11:] == ("{}", None, None, None)


def test_packed_and_json_make_the_same_map() -> None:
    readings = _messages()
    old = metrics_map(_old_texts(readings))
    texts, keys, vals = _new_columns(readings)
    assert texts.null_count == len(readings) - 2  # only the two fallbacks keep JSON
    _same_maps(metrics_column(texts, keys, vals), old)
    # only packed rows (the usual slice after the upgrade), from any offset
    packable = readings[:-2]
    _, keys, vals = _new_columns(packable)
    for start in (0, 1, 5):
        _same_maps(packed_map(keys[start:], vals[start:]),
                   metrics_map(_old_texts(packable[start:])))  # fmt: skip
    # a slice without metrics, and an empty one
    _, keys, vals = _new_columns(readings[3:4])
    _same_maps(metrics_column(pa.nulls(1, pa.string()), keys, vals),
               metrics_map(pa.nulls(1, pa.string())))  # fmt: skip
    empty = pa.array([], pa.string())
    assert len(metrics_column(empty, empty, pa.array([], pa.binary()))) == 0


def test_a_mixed_slice_is_mapped_as_all_json() -> None:
    readings = _messages()
    old = metrics_map(_old_texts(readings))
    texts, keys, vals = _new_columns(readings)
    # the first half written by a v3 agent (JSON), the rest packed
    half = len(readings) // 2
    old_texts = _old_texts(readings)
    mixed_texts = pa.concat_arrays([old_texts[:half], texts[half:]])
    mixed_keys = pa.concat_arrays([pa.nulls(half, pa.string()), keys[half:]])
    mixed_vals = pa.concat_arrays([pa.nulls(half, pa.binary()), vals[half:]])
    _same_maps(metrics_column(mixed_texts, mixed_keys, mixed_vals), old)


def test_damaged_packed_metrics_are_an_error_not_a_wrong_map() -> None:
    keys = pa.array([f"a{METRIC_SEP}b", "a"])
    vals = pa.array([np.array([1.0, 2.0]).tobytes(), np.array([1.0, 2.0]).tobytes()], pa.binary())
    with pytest.raises(StoreError, match="damaged"):
        packed_map(keys, vals)
    with pytest.raises(StoreError, match="damaged"):
        metrics_column(pa.array(["{}", None]), keys, vals)
    with pytest.raises(StoreError, match="damaged"):
        packed_map(pa.array(["a", None]), pa.array([vals[1].as_py()[:8]] * 2, pa.binary()))


def test_null_rows_holding_bytes_are_skipped() -> None:
    """The ADBC driver leaves a byte in the data buffer for each NULL of a BLOB column."""
    readings = _messages()[:9]
    _, keys, vals = _new_columns(readings)
    blobs = [b"\0" if v is None else v for v in vals.to_pylist()]
    offsets = np.zeros(len(blobs) + 1, np.int32)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    holey = pa.Array.from_buffers(
        pa.binary(), len(blobs),
        [vals.buffers()[0], pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(blobs))],
    )  # fmt: skip
    assert holey.null_count == 1 and holey.to_pylist() == vals.to_pylist()
    _same_maps(packed_map(keys, holey), metrics_map(_old_texts(readings)))
    _same_maps(packed_map(keys[4:], holey[4:]), metrics_map(_old_texts(readings[4:])))


def _v3_buffer(path: Path) -> None:
    """A buffer as a v3 agent left it: no packed columns."""
    schema = buffer_mod._SCHEMA.replace(",\n    metric_keys TEXT,\n    metric_vals BLOB", "")
    assert "metric_vals" not in schema
    conn = sqlite3.connect(path)
    conn.executescript(f"BEGIN; {schema} PRAGMA user_version = 3; COMMIT;")
    conn.close()


def _export(config: Path, max_rows: int = 100_000) -> list[Path]:
    cfg = cfg_of(config)
    buf = Buffer.open(cfg.db_path)
    try:
        done = export_pending(cfg.db_path, buf.conn, cfg.gateway_id, cfg.outbox, max_rows)
    finally:
        buf.close()
    return [b.path for b in done]


def _readings_of(paths: list[Path]) -> pa.Table:
    t = pa.concat_tables(pq.read_table(p) for p in paths)
    return t.filter(pc.equal(t["record_type"], "reading"))


def test_a_v3_buffer_is_upgraded_and_a_batch_of_both_layouts_exports_as_json(
    tmp_path: Path,
) -> None:
    readings = _messages()
    half = len(readings) // 2
    # the expected file: every reading stored as JSON text, as before v4
    for sub in ("ref", "gw", "gw2"):
        (tmp_path / sub).mkdir()
    ref_config = agent_config(tmp_path / "ref")
    ref_cfg = cfg_of(ref_config)
    ref_cfg.db_path.parent.mkdir(parents=True)
    _v3_buffer(ref_cfg.db_path)
    add_readings(ref_cfg, (json_row(0, **_as_json(r)) for r in readings))

    config = agent_config(tmp_path / "gw")
    cfg = cfg_of(config)
    cfg.db_path.parent.mkdir(parents=True)
    _v3_buffer(cfg.db_path)
    conn = sqlite3.connect(cfg.db_path)
    # a v3 agent's rows: written with the v3 columns only
    conn.executemany(
        "INSERT INTO readings (ts_ms, device_id, kind, seq, site, received_ms, state,"
        " event_type, fw, lat, lon, metrics, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [tuple(_as_json(r).values()) for r in readings[:half]],
    )
    conn.commit()
    conn.close()
    buf = Buffer.open(cfg.db_path)  # the upgrade
    try:
        assert buf.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        cols = [r[1] for r in buf.conn.execute("PRAGMA table_info(readings)")]
        assert cols[-3:] == ["detail", "metric_keys", "metric_vals"]
        assert buf.write(readings[half:]) == len(readings) - half
        stored = buf.conn.execute(
            "SELECT count(metrics), count(metric_vals) FROM readings"
        ).fetchone()
    finally:
        buf.close()
    with_metrics = [r.metrics is not None for r in readings]
    # the v3 rows and the two fallbacks hold JSON, the other new rows are packed
    assert stored == (sum(with_metrics[:half]) + 2, sum(with_metrics[half:]) - 2)
    Buffer.open(cfg.db_path).close()  # opening a v4 buffer again changes nothing

    (path,) = _export(config)  # one batch, one slice: both layouts
    (ref,) = _export(ref_config)
    got, want = _readings_of([path]), _readings_of([ref])
    assert got.num_rows == len(readings)
    _same_maps(got["metrics"].combine_chunks(), want["metrics"].combine_chunks())
    assert got.drop_columns(["metrics"]).equals(want.drop_columns(["metrics"]))
    # and in batches of a few rows each: JSON only, both, packed only
    config2 = agent_config(tmp_path / "gw2")
    cfg2 = cfg_of(config2)
    cfg2.db_path.parent.mkdir(parents=True)
    _v3_buffer(cfg2.db_path)
    add_readings(cfg2, (json_row(0, **_as_json(r)) for r in readings[:half]))
    buf = Buffer.open(cfg2.db_path)
    try:
        buf.write(readings[half:])
    finally:
        buf.close()
    paths = _export(config2, max_rows=7)
    assert len(paths) == 5
    done = 0
    for p in paths:
        t = _readings_of([p])
        part = readings[done : done + t.num_rows]
        done += t.num_rows
        assert t["seq"].to_pylist() == [r.seq for r in part]
        _same_maps(t["metrics"].combine_chunks(), metrics_map(_old_texts(part)))
    assert done == len(readings)


def _as_json(r: Reading) -> dict[str, object]:
    """A reading's v3 row (the insert's 13 columns, by name)."""
    row = reading_row(r)
    text = row[11]
    if row[14] is not None:
        assert r.metrics is not None
        text = json.dumps(r.metrics, separators=(",", ":"))
    names = ("ts_ms", "device_id", "kind", "seq", "site", "received_ms", "state",
             "event_type", "fw", "lat", "lon", "metrics", "detail")  # fmt: skip
    return dict(zip(names, (*row[:11], text, row[12]), strict=True))


def test_the_sqlite3_fallback_reads_the_same_rows_as_adbc(tmp_path: Path) -> None:
    """Without the ADBC driver (32-bit ARM) the worker reads through ``sqlite3``: same rows."""
    from agent.arrowio import read_readings, read_readings_adbc, to_batch_rows

    readings = _messages()
    cfg = cfg_of(agent_config(tmp_path))
    buf = Buffer.open(cfg.db_path)
    try:
        buf.write(readings[:10])
        add_readings(cfg, (json_row(0, **_as_json(r)) for r in readings[10:12]))  # v3 rows
        buf.write(readings[12:])
        # a range without telemetry: no fw, no metrics at all (those columns are not
        # counted first, and come back from ADBC as NULLs of the wrong type)
        status = [decode(f"fleet/site-a/dev-{i}/status",
                         json.dumps({"device_id": f"dev-{i}", "ts": T0_MS + 500 + i,
                                     "state": "online"}).encode(), T0_MS + 600)
                  for i in range(3)]  # fmt: skip
        buf.write(status)
    finally:
        buf.close()
    n = len(readings)
    for lo, hi in ((1, n + 3), (1, 10), (11, n), (n + 1, n + 3)):
        conn = sqlite3.connect(cfg.db_path)
        try:
            slow = read_readings(conn, lo, hi)
        finally:
            conn.close()
        fast = read_readings_adbc(cfg.db_path, lo, hi)
        assert slow.num_rows == hi - lo + 1 and slow.equals(fast)
        assert to_batch_rows(slow, "gw", {}).equals(to_batch_rows(fast, "gw", {}))
    assert fast["fw"].null_count == fast["metric_vals"].null_count == 3
