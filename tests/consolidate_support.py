"""Helpers for the consolidation tests and benchmark: a synthetic fleet, landing, one Spark session.

``make_fleet`` draws a fleet with known quirks (roaming devices, readings uploaded by two
gateways, outages with LWT offline and boot events, lossy links, a skewed clock, devices
missing from the registry, firmware updates, alerts) and ``land`` writes it as the ingest
API would: Parquet batches under ``landing/gateway=…/date=…`` recorded in a real ledger.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from central.consolidate.sources import ALERTS_SCHEMA, FIRMWARE_SCHEMA, REGISTRY_SCHEMA
from schemas.batch import (
    BATCH_SCHEMA,
    PARQUET_WRITE_OPTIONS,
    RECORD_OBSERVATION,
    RECORD_READING,
    SCHEMA_VERSION,
    batch_id,
    batch_metadata,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
HOUR_MS = 3_600_000
_TS = pa.timestamp("ms", tz="UTC")


@dataclass
class Fleet:
    """Inputs of one consolidation: all batch rows, registry, firmware, alerts, days."""

    batch: pa.Table
    registry: pa.Table
    firmware: pa.Table
    alerts: pa.Table
    days: list[date]
    batch_hours: int = 6
    notes: dict[str, Any] = field(default_factory=dict)


def make_fleet(
    n_devices: int = 40,
    hours: float = 30.0,
    n_gateways: int = 4,
    seed: int = 7,
    heartbeat_s: float = 30.0,
    batch_hours: int = 6,
    start: datetime = T0,
) -> Fleet:
    """A synthetic fleet; about ``n_devices * hours * 3600 / heartbeat_s`` readings."""
    rng = np.random.default_rng(seed)
    t0 = int(start.timestamp() * 1000)
    t_end = t0 + int(hours * HOUR_MS)
    gws = [f"gw-{g:02d}" for g in range(n_gateways)]
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("gw", "dev", "kind", "ts", "seq", "recv", "state", "etype")
    }
    reg_rows, fw_rows, alert_rows = [], [], []
    notes: dict[str, Any] = {"roaming": [], "duplicated": 0, "skewed": [], "unregistered": []}

    def add(
        gw: np.ndarray,
        dev: str,
        kind: str,
        ts: np.ndarray,
        seq: np.ndarray,
        recv: np.ndarray,
        state: str | None = None,
        etype: str | None = None,
    ) -> None:
        n = len(ts)
        cols["gw"].append(np.asarray(gw, dtype=object))
        cols["dev"].append(np.full(n, dev, dtype=object))
        cols["kind"].append(np.full(n, kind, dtype=object))
        cols["ts"].append(ts.astype(np.int64))
        cols["seq"].append(seq.astype(np.int64))
        cols["recv"].append(recv.astype(np.int64))
        cols["state"].append(np.full(n, state, dtype=object))
        cols["etype"].append(np.full(n, etype, dtype=object))

    for i in range(n_devices):
        dev = f"dev-{i:05d}"
        home = i % n_gateways
        h = heartbeat_s * (2 if rng.random() < 0.05 else 1)
        h_ms = int(h * 1000)
        true_t = np.arange(t0 + int(rng.integers(0, h_ms)), t_end, h_ms, dtype=np.int64)
        # outages: readings stop; LWT offline ~1.5 keepalives later, boot + online on return
        keep = np.ones(len(true_t), dtype=bool)
        outages = []
        for _ in range(rng.poisson(max(hours / 24.0, 0.2) * 1.5)):
            o_s = int(rng.integers(t0, t_end))
            o_e = o_s + int(rng.exponential(600_000)) + 120_000
            keep &= ~((true_t >= o_s) & (true_t < o_e))
            outages.append((o_s, min(o_e, t_end)))
        loss = 0.1 if rng.random() < 0.05 else 0.01
        keep &= rng.random(len(true_t)) >= loss
        true_t = true_t[keep]
        delay = rng.integers(50, 1500, len(true_t))
        skew = 400_000 if rng.random() < 0.02 else 0
        if skew:
            notes["skewed"].append(dev)
        gw = np.full(len(true_t), gws[home], dtype=object)
        if rng.random() < 0.1 and n_gateways > 1:
            switch = int(rng.integers(t0, t_end))
            gw[true_t >= switch] = gws[(home + 1) % n_gateways]
            notes["roaming"].append(dev)
        seq = np.arange(len(true_t), dtype=np.int64)
        add(gw, dev, "telemetry", true_t + skew, seq, true_t + delay)
        # a copy of some readings through the neighbour gateway, received a bit later
        dup = rng.random(len(true_t)) < 0.03
        if n_gateways > 1 and dup.any():
            other = np.full(int(dup.sum()), gws[(home + 1) % n_gateways], dtype=object)
            add(
                other,
                dev,
                "telemetry",
                true_t[dup] + skew,
                seq[dup],
                true_t[dup] + delay[dup] + 500,
            )
            notes["duplicated"] += int(dup.sum())
        base_seq = len(true_t)
        for k, (o_s, o_e) in enumerate(outages):
            if rng.random() < 0.7:
                t_off = np.array([o_s + int(1.5 * h_ms)])
                add(
                    np.array([gws[home]]),
                    dev,
                    "status",
                    t_off + skew,
                    np.array([-1]),
                    t_off + 20,
                    state="offline",
                )
            if o_e < t_end:
                t_on = np.array([o_e])
                add(
                    np.array([gws[home]]),
                    dev,
                    "event",
                    t_on + skew,
                    np.array([base_seq + k]),
                    t_on + 30,
                    etype="boot",
                )
                add(
                    np.array([gws[home]]),
                    dev,
                    "status",
                    t_on + skew + 1,
                    np.array([-1]),
                    t_on + 40,
                    state="online",
                )
            if rng.random() < 0.5:
                cleared = None if rng.random() < 0.1 else o_e + 30_000
                alert_rows.append(
                    {
                        "alert_id": f"a-{dev}-{k}",
                        "device_id": dev,
                        "severity": "major",
                        "type": "offline",
                        "raised_at": o_s + 60_000,
                        "cleared_at": cleared,
                    }
                )
        if rng.random() < 0.3:
            r = int(rng.integers(t0, t_end))
            alert_rows.append(
                {
                    "alert_id": f"i-{dev}",
                    "device_id": dev,
                    "severity": "minor",
                    "type": "battery_low",
                    "raised_at": r,
                    "cleared_at": r + 1_800_000,
                }
            )
        # registry: a few devices missing, some commissioned late or decommissioned early
        if rng.random() < 0.03:
            notes["unregistered"].append(dev)
        else:
            comm = t0 - 86_400_000
            decomm = None
            u = rng.random()
            if u < 0.04:
                comm = int(rng.integers(t0, t_end))
            elif u < 0.06:
                decomm = int(rng.integers(t0, t_end))
            site = f"site-{home // 2}"
            lat = 52.0 + home * 0.7 + rng.normal(0, 0.05)
            lon = 13.0 + home * 0.9 + rng.normal(0, 0.05)
            reg_rows.append(
                {
                    "device_id": dev,
                    "site": site,
                    "lat": float(lat),
                    "lon": float(lon),
                    "heartbeat_s": h,
                    "gap_k": 3.0 if rng.random() < 0.05 else None,
                    "commissioned_at": comm,
                    "decommissioned_at": decomm,
                }
            )
        # firmware: v1.0.0 before the start, some devices updated during it, a few unknown
        if rng.random() > 0.05:
            fw_rows.append(
                {
                    "device_id": dev,
                    "firmware_version": "1.0.0",
                    "installed_at": t0 - 10 * 86_400_000,
                }
            )
            if rng.random() < 0.4:
                up1 = int(rng.integers(t0, t_end))
                fw_rows.append({"device_id": dev, "firmware_version": "1.1.0", "installed_at": up1})
                if rng.random() < 0.5:
                    fw_rows.append(
                        {
                            "device_id": dev,
                            "firmware_version": "1.2.0",
                            "installed_at": int(rng.integers(up1, t_end + 1)),
                        }
                    )

    def cat(name: str) -> np.ndarray:
        return np.concatenate(cols[name]) if cols[name] else np.array([], dtype=object)

    n = len(cat("ts"))
    site_of = {r["device_id"]: r["site"] for r in reg_rows}
    devs = cat("dev")
    readings = {
        "record_type": pa.array(np.full(n, RECORD_READING, dtype=object), pa.string()),
        "gateway_id": pa.array(cat("gw"), pa.string()),
        "device_id": pa.array(devs, pa.string()),
        "site": pa.array([site_of.get(d, "site-x") for d in devs], pa.string()),
        "kind": pa.array(cat("kind"), pa.string()),
        "ts": pa.array(cat("ts"), pa.int64()).cast(_TS),
        "seq": pa.array(cat("seq"), pa.int64()),
        "received_at": pa.array(cat("recv"), pa.int64()).cast(_TS),
        "state": pa.array(cat("state"), pa.string()),
        "event_type": pa.array(cat("etype"), pa.string()),
    }
    reading_table = _full_schema(readings, n)
    # gateways: connected all the time but for one or two short disconnects
    obs = []
    for g in gws:
        cuts = sorted(int(x) for x in rng.integers(t0, t_end, int(rng.integers(1, 3))))
        edges = [t0]
        for c in cuts:
            edges += [c, c + int(rng.integers(300_000, 1_200_000))]
        edges.append(t_end)
        for s, e in zip(edges[::2], edges[1::2], strict=True):
            if e > s:
                obs.append((g, s, e))
    obs_table = _full_schema(
        {
            "record_type": pa.array([RECORD_OBSERVATION] * len(obs), pa.string()),
            "gateway_id": pa.array([o[0] for o in obs], pa.string()),
            "ts": pa.array([o[1] for o in obs], pa.int64()).cast(_TS),
            "end_ts": pa.array([o[2] for o in obs], pa.int64()).cast(_TS),
        },
        len(obs),
    )
    batch = pa.concat_tables([reading_table, obs_table])
    days = [start.date() + timedelta(days=k) for k in range((t_end - 1 - t0) // 86_400_000 + 1)]
    return Fleet(
        batch=batch,
        registry=_ms_table(reg_rows, REGISTRY_SCHEMA),
        firmware=_ms_table(fw_rows, FIRMWARE_SCHEMA),
        alerts=_ms_table(alert_rows, ALERTS_SCHEMA),
        days=days,
        batch_hours=batch_hours,
        notes=notes,
    )


def _full_schema(columns: dict[str, pa.Array], n: int) -> pa.Table:
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in BATCH_SCHEMA},
        schema=BATCH_SCHEMA,
    )


def _ms_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    cols = {}
    for f in schema:
        values = [r[f.name] for r in rows]
        if pa.types.is_timestamp(f.type):
            cols[f.name] = pa.array(values, pa.int64()).cast(f.type)
        else:
            cols[f.name] = pa.array(values, f.type)
    return pa.table(cols, schema=schema)


# -- batches as landed by the ingest API ----------------------------------------------------


def split_batches(fleet: Fleet) -> list[tuple[str, str, pa.Table]]:
    """(gateway, batch id, rows) per gateway and ``batch_hours`` of receive time."""
    b = fleet.batch
    when = pc.if_else(pc.is_null(b["received_at"]), b["ts"], b["received_at"]).cast(pa.int64())
    chunk = pc.divide(pc.subtract(when, T0_MS), fleet.batch_hours * HOUR_MS)
    keyed = pa.table({"gw": b["gateway_id"], "chunk": chunk, "i": pa.array(range(b.num_rows))})
    keyed = keyed.sort_by([("gw", "ascending"), ("chunk", "ascending"), ("i", "ascending")])
    gw = keyed["gw"].to_numpy(zero_copy_only=False)
    ch = keyed["chunk"].to_numpy()
    cut = np.flatnonzero((gw[1:] != gw[:-1]) | (ch[1:] != ch[:-1])) + 1
    bounds = [0, *cut.tolist(), len(gw)]
    ordered = b.take(keyed["i"])
    out = []
    seq: dict[str, int] = {}
    for lo, hi in itertools.pairwise(bounds):
        g = str(gw[lo])
        seq[g] = seq.get(g, 0) + 1
        out.append((g, batch_id(g, seq[g]), ordered.slice(lo, hi - lo)))
    return out


def write_batch(
    path: Path, gateway: str, seq: int, rows: pa.Table, version: str = SCHEMA_VERSION
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = rows.replace_schema_metadata(batch_metadata(gateway, seq, version))
    pq.write_table(table, path, **PARQUET_WRITE_OPTIONS)  # type: ignore[arg-type]


def land(
    data_dir: Path,
    batches: Sequence[tuple[str, str, pa.Table]],
    received_ms: int | None = None,
    version: str = SCHEMA_VERSION,
) -> list[str]:
    """Write batches into ``<data_dir>/landing`` and record them in the SQLite ledger
    (``version``: the schema version the files declare; their columns are the rows')."""
    from central.consolidate.sources import sha256_file
    from central.landing import landing_path
    from central.ledger import LedgerBatch, open_ledger

    ledger = open_ledger(f"sqlite:///{(data_dir / 'ledger.sqlite3').absolute()}")
    ids = []
    try:
        for gw, bid, rows in batches:
            ts = rows["ts"].cast(pa.int64())
            min_ms = pc.min(ts).as_py()
            max_ms = pc.max(ts).as_py()
            recv = (
                received_ms
                if received_ms is not None
                else int(datetime.now(UTC).timestamp() * 1000)
            )
            rel = landing_path(gw, bid, min_ms, recv)
            path = data_dir / "landing" / rel
            write_batch(path, gw, int(bid.rsplit("-", 1)[1]), rows, version)
            ledger.record_batch(
                LedgerBatch(
                    batch_id=bid,
                    gateway_id=gw,
                    sha256=sha256_file(path),
                    size_bytes=path.stat().st_size,
                    rows=rows.num_rows,
                    min_ts_ms=min_ms,
                    max_ts_ms=max_ms,
                    landing_path=rel,
                    received_at_ms=recv,
                )
            )
            ids.append(bid)
    finally:
        ledger.close()
    return ids


# -- one Spark session for the whole suite --------------------------------------------------


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A local Spark session (2 cores, 2 shuffle partitions, UTC) shared by every test."""
    pytest.importorskip("pyspark")
    from central.consolidate.engine import spark_session

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = spark_session(
        "local[2]",
        {
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "1g",
            "spark.sql.warehouse.dir": str(Path(os.environ.get("TMPDIR", "/tmp")) / "fp-spark-wh"),
        },
        app_name="fleetpulse-tests",
    )
    try:
        yield session
    finally:
        session.stop()


# -- source files and config ---------------------------------------------------------------


def write_avro(path: Path, table: pa.Table, avsc: Path, *, reference_lib: bool = False) -> Path:
    """Write rows as Avro with fastavro, or with the reference Apache ``avro`` library."""
    import json

    schema_json = json.loads(avsc.read_text())
    records = table.to_pylist()
    path.parent.mkdir(parents=True, exist_ok=True)
    if reference_lib:
        import avro.datafile
        import avro.io
        import avro.schema

        schema = avro.schema.parse(json.dumps(schema_json))
        with open(path, "wb") as fh:
            writer = avro.datafile.DataFileWriter(fh, avro.io.DatumWriter(), schema)
            for r in records:
                writer.append(r)
            writer.close()
    else:
        import fastavro

        with open(path, "wb") as fh:
            fastavro.writer(fh, fastavro.parse_schema(schema_json), records)
    return path


def write_registry_csv(path: Path, registry: pa.Table) -> Path:
    """The registry as CSV with RFC 3339 UTC times and empty cells for nulls."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(registry.column_names)
        for r in registry.to_pylist():
            w.writerow(
                [
                    "" if v is None else v.isoformat() if isinstance(v, datetime) else v
                    for v in r.values()
                ]
            )
    return path


def write_sources(root: Path, fleet: Fleet) -> dict[str, Path]:
    """Registry CSV, firmware Avro (a folder of two files) and alerts Avro for a fleet."""
    from schemas.avro import ALERTS_AVSC, FIRMWARE_AVSC

    fw = fleet.firmware
    half = fw.num_rows // 2
    write_avro(root / "firmware" / "part-1.avro", fw.slice(0, half), FIRMWARE_AVSC)
    write_avro(root / "firmware" / "part-2.avro", fw.slice(half), FIRMWARE_AVSC)
    return {
        "registry": write_registry_csv(root / "registry.csv", fleet.registry),
        "firmware": root / "firmware",
        "alerts": write_avro(root / "alerts.avro", fleet.alerts, ALERTS_AVSC),
    }


def write_config(root: Path, data_dir: Path, sources: dict[str, Path], **extra: str) -> Path:
    """A central.toml pointing at ``data_dir`` and the source files."""
    lines = [f'data_dir = "{data_dir}"', "", "[sources]"]
    lines += [f'{k} = "{v}"' for k, v in sources.items()]
    lines += ["", "[consolidate]", *(f"{k} = {v}" for k, v in extra.items())]
    path = root / "central.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- golden cases as engine inputs ------------------------------------------------------------

SEP = "__"


def with_batch_ids(batch: pa.Table, ingested: datetime = T0) -> tuple[pa.Table, pa.Table]:
    """One batch per gateway: rows with ``batch_id`` and the matching ledger table."""
    ids = pc.binary_join_element_wise(batch["gateway_id"], pa.scalar("-0000000001"), "")
    rows = batch.append_column("batch_id", ids)
    counts = rows.group_by(["batch_id", "gateway_id"]).aggregate([("batch_id", "count")])
    counts = counts.sort_by("batch_id")
    ledger = pa.table(
        {
            "batch_id": counts["batch_id"],
            "ledger_gateway_id": counts["gateway_id"],
            "ingested_at": pa.array([ingested] * counts.num_rows, _TS),
            "ledger_rows": counts["batch_id_count"].cast(pa.int64()),
        }
    )
    return rows, ledger


@dataclass
class Combined:
    """Several golden cases as one input, names prefixed with ``<case>__`` to keep them apart."""

    batch: pa.Table
    registry: pa.Table
    days: list[date]
    cases: list[Any]

    def problems(self, device_day: pa.Table) -> dict[str, list[str]]:
        from tests.kpi_cases import compare

        rows = device_day.to_pylist()
        out = {}
        for case in self.cases:
            prefix = case.name + SEP
            mine = [
                {**r, "device_id": r["device_id"][len(prefix) :]}
                for r in rows
                if r["device_id"].startswith(prefix) and r["day"] in case.days
            ]
            found = compare(mine, case.expected)
            if found:
                out[case.name] = found
        return out


def combine_cases(cases: Sequence[Any]) -> Combined:
    """Golden cases in one input; a case's config gap_k is written into its registry rows."""
    from central.consolidate.sources import registry_table

    batches, registries = [], []
    for case in cases:
        p = case.name + SEP
        b = case.batch
        dev = pc.if_else(
            pc.is_null(b["device_id"]),
            b["device_id"],
            pc.binary_join_element_wise(pa.scalar(p), b["device_id"], ""),
        )
        b = b.set_column(b.schema.get_field_index("device_id"), "device_id", dev)
        gw = pc.binary_join_element_wise(pa.scalar(p), b["gateway_id"], "")
        b = b.set_column(b.schema.get_field_index("gateway_id"), "gateway_id", gw)
        batches.append(b.cast(BATCH_SCHEMA))
        seen = set(case.batch["device_id"].drop_null().to_pylist())
        registered = {d.device_id for d in case.registry}
        if seen - registered and case.gap_k != 2.5:
            raise ValueError(f"{case.name}: unregistered devices need the default gap_k 2.5")
        devices = [
            d.model_copy(
                update={
                    "device_id": p + d.device_id,
                    "gap_k": d.gap_k if d.gap_k is not None else case.gap_k,
                }
            )
            for d in case.registry
        ]
        registries.append(registry_table(devices))
    days = sorted({d for c in cases for d in c.days})
    return Combined(pa.concat_tables(batches), pa.concat_tables(registries), days, list(cases))
