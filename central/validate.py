"""Validate an uploaded Parquet batch against the contract (DESIGN §5) before it is stored.

Order matters: cheap structural checks first (magic, footer), then what the footer and the
page headers *declare* (rows, decompressed bytes) against the limits, and only then is any
page decompressed — with page checksums verified and strings kept dictionary-encoded so a
repeated long string cannot blow up in memory while it is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.batch import (
    BATCH_SCHEMA,
    BATCH_SCHEMAS,
    META_BATCH_SEQ,
    META_GATEWAY_ID,
    META_SCHEMA_VERSION,
    PARQUET_WRITE_OPTIONS,
    RECORD_READING,
    RECORD_TYPES,
    batch_metadata,
)

from .errors import Forbidden, InvalidBatch
from .footer import read_column_chunks
from .pages import iter_pages
from .thrift import FormatError

MAGIC = b"PAR1"


@dataclass(frozen=True)
class Limits:
    """What a batch's footer and pages may declare."""

    max_rows: int
    max_decompressed_bytes: int


@dataclass(frozen=True)
class BatchFacts:
    """What the ledger records about a valid batch."""

    rows: int
    min_ts_ms: int | None
    max_ts_ms: int | None


def validate_batch(
    body: bytes, gateway_id: str, limits: Limits, batch_seq: int | None = None
) -> BatchFacts:
    """Check ``body`` is a v1 or v2 batch of ``gateway_id`` within ``limits``; 422/403 if not."""
    _check_magic(body)
    try:
        pf = pq.ParquetFile(pa.BufferReader(body))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidBatch(f"Parquet footer cannot be read: {exc}", "not_parquet") from exc
    meta = pf.metadata.metadata or {}
    version = _schema_version(meta)
    _check_schema(pf.schema_arrow, version)
    _check_metadata(meta, gateway_id, batch_seq)
    _check_declared_sizes(pf.metadata, body, limits)
    return _check_rows(body, pf.metadata, gateway_id, limits, version)


def warm_up() -> None:
    """Validate a tiny batch once, so first-use costs of pyarrow's readers and compute kernels
    are paid at startup rather than by the first upload."""
    import io

    table = pa.table(
        {f.name: pa.array([None], f.type) if f.nullable else _one(f) for f in BATCH_SCHEMA},
        schema=BATCH_SCHEMA,
    ).replace_schema_metadata(batch_metadata("warm-up", 1))
    buf = io.BytesIO()
    pq.write_table(table, buf, **PARQUET_WRITE_OPTIONS)
    validate_batch(buf.getvalue(), "warm-up", Limits(10, 1 << 20), 1)


def _one(field: pa.Field) -> pa.Array:
    values = {"record_type": RECORD_READING, "gateway_id": "warm-up", "ts": 0}
    return pa.array([values[field.name]], field.type)


def _check_magic(body: bytes) -> None:
    if len(body) < 12 or body[:4] != MAGIC or body[-4:] != MAGIC:
        raise InvalidBatch(
            f"body ({len(body)} bytes) is not a Parquet file: no PAR1 magic at both ends; "
            "upload the batch file exactly as written",
            "not_parquet",
        )
    footer_len = int.from_bytes(body[-8:-4], "little")
    if footer_len > len(body) - 12:
        raise InvalidBatch(
            f"Parquet footer length {footer_len} exceeds the file ({len(body)} bytes): "
            "the file is truncated",
            "not_parquet",
        )


def _schema_version(meta: dict[bytes, bytes]) -> str:
    version = meta.get(META_SCHEMA_VERSION)
    if version is None:
        raise InvalidBatch(
            f"key-value metadata {META_SCHEMA_VERSION.decode()!r} missing: "
            "write batches with schemas.batch.batch_metadata()",
            "wrong_schema",
        )
    text = version.decode(errors="replace")
    if text not in BATCH_SCHEMAS:
        raise InvalidBatch(
            f"schema version {text!r} is not supported (this central reads versions "
            f"{', '.join(repr(v) for v in BATCH_SCHEMAS)})",
            "wrong_schema",
        )
    return text


def _check_schema(schema: pa.Schema, version: str) -> None:
    problems = []
    got = {f.name: f for f in schema}
    for want in BATCH_SCHEMAS[version]:
        have = got.pop(want.name, None)
        if have is None:
            problems.append(f"column {want.name!r} missing")
        elif not have.type.equals(want.type):
            problems.append(f"column {want.name!r} is {have.type}, expected {want.type}")
    problems += [f"unexpected column {name!r}" for name in got]
    if problems:
        raise InvalidBatch(
            f"batch schema differs from schema v{version} (schemas/batch.py BATCH_SCHEMAS): "
            + "; ".join(problems[:8]),
            "wrong_schema",
        )


def _check_metadata(meta: dict[bytes, bytes], gateway_id: str, batch_seq: int | None) -> None:
    meta_gw = meta.get(META_GATEWAY_ID)
    if meta_gw is None:
        raise InvalidBatch(
            f"key-value metadata {META_GATEWAY_ID.decode()!r} missing: "
            "write batches with schemas.batch.batch_metadata()",
            "wrong_schema",
        )
    if meta_gw.decode(errors="replace") != gateway_id:
        raise Forbidden(
            f"batch metadata names gateway {meta_gw.decode(errors='replace')!r} but the token "
            f"belongs to {gateway_id!r}: a gateway uploads only its own batches",
            "other_gateway",
        )
    seq = meta.get(META_BATCH_SEQ)
    if batch_seq is not None and seq is not None and seq.decode(errors="replace") != str(batch_seq):
        raise InvalidBatch(
            f"metadata {META_BATCH_SEQ.decode()!r} = {seq.decode(errors='replace')!r} does not "
            f"match the batch id's sequence {batch_seq}",
            "wrong_schema",
        )


def _check_declared_sizes(md: pq.FileMetaData, body: bytes, limits: Limits) -> None:
    if md.num_rows > limits.max_rows:
        raise InvalidBatch(
            f"batch declares {md.num_rows} rows, over max_batch_rows = {limits.max_rows}: "
            "split it into smaller batches",
            "too_many_rows",
        )
    # the chunks are read from the footer's bytes, not through md.row_group(i).column(j),
    # which aborts the process on some mangled footers (central/footer.py)
    try:
        groups = read_column_chunks(body)
    except FormatError as exc:
        raise InvalidBatch(f"Parquet footer is malformed: {exc}", "corrupt") from exc
    if len(groups) != md.num_row_groups:
        raise InvalidBatch(
            f"footer lists {len(groups)} row groups where the reader counts {md.num_row_groups}",
            "corrupt",
        )
    footer_start = len(body) - 8 - int.from_bytes(body[-8:-4], "little")
    buf = memoryview(body)[:footer_start]
    declared = 0
    for i, chunks in enumerate(groups):
        # a column chunk is read against the schema's leaf of the same index
        if len(chunks) != md.num_columns:
            raise InvalidBatch(
                f"row group {i} has {len(chunks)} column chunks for {md.num_columns} "
                "schema columns",
                "corrupt",
            )
        for col in chunks:
            # Writers leave an unused offset at 0 (pyarrow does for empty row groups).
            offsets = [col.data_page_offset]
            if col.dictionary_page_offset is not None:
                offsets.append(col.dictionary_page_offset)
            start = min((o for o in offsets if o >= len(MAGIC)), default=-1)
            in_pages = 0
            try:
                for page in iter_pages(buf, start, col.total_compressed_size):
                    if not page.has_crc:
                        raise InvalidBatch(
                            f"column {col.path!r} has pages without a CRC: write "
                            "batches with page checksums on (PARQUET_WRITE_OPTIONS)",
                            "no_page_checksum",
                        )
                    in_pages += page.header_len + page.uncompressed_size
                    _check_budget(declared + in_pages, limits, "declares")
            except FormatError as exc:
                raise InvalidBatch(
                    f"column {col.path!r} in row group {i}: {exc}", "corrupt"
                ) from exc
            # Footer and page headers are both claims a hostile file controls: count the
            # larger of the two.
            declared += max(in_pages, col.total_uncompressed_size)
            _check_budget(declared, limits, "declares")


def _check_budget(total: int, limits: Limits, verb: str) -> None:
    if total > limits.max_decompressed_bytes:
        raise InvalidBatch(
            f"batch {verb} more than max_decompressed_bytes = {limits.max_decompressed_bytes} "
            "bytes once decompressed: refused without decompressing; split it into smaller "
            "batches",
            "too_large_decompressed",
        )


def _string_leaves(md: pq.FileMetaData) -> list[str]:
    schema = md.schema
    return [
        schema.column(i).path
        for i in range(len(schema))
        if schema.column(i).physical_type == "BYTE_ARRAY"
    ]


def _check_rows(
    body: bytes, md: pq.FileMetaData, gateway_id: str, limits: Limits, version: str
) -> BatchFacts:
    pf = pq.ParquetFile(
        pa.BufferReader(body),
        read_dictionary=_string_leaves(md),
        page_checksum_verification=True,
    )
    rows = 0
    decoded = 0
    lo: int | None = None
    hi: int | None = None
    for i in range(md.num_row_groups):
        try:
            table = pf.read_row_group(i, use_threads=False)
            # the reader trusts what it decoded: a flipped byte can leave dictionary
            # indices past their dictionary (a crash in any later kernel, here or in
            # consolidation); a full validation finds it
            table.validate(full=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InvalidBatch(
                f"row group {i} cannot be decoded (page checksum or data corrupt): {exc}",
                "corrupt",
            ) from exc
        rows += table.num_rows
        decoded += sum(_decoded_bytes(chunk) for col in table.columns for chunk in col.chunks)
        _check_budget(decoded, limits, "decodes to")
        _check_table(table, gateway_id, version)
        if table.num_rows:
            mm = pc.min_max(table.column("ts").cast(pa.int64()))
            t_lo, t_hi = mm["min"].as_py(), mm["max"].as_py()
            lo = t_lo if lo is None else min(lo, t_lo)
            hi = t_hi if hi is None else max(hi, t_hi)
    if rows != md.num_rows:
        raise InvalidBatch(f"footer declares {md.num_rows} rows but {rows} were read", "corrupt")
    return BatchFacts(rows=rows, min_ts_ms=lo, max_ts_ms=hi)


def _check_table(table: pa.Table, gateway_id: str, version: str) -> None:
    for field in BATCH_SCHEMAS[version]:
        if not field.nullable and table.column(field.name).null_count:
            raise InvalidBatch(
                f"column {field.name!r} holds nulls; schema v{version} requires a value",
                "wrong_schema",
            )
    gateways = {str(v) for v in _distinct(table.column("gateway_id"))}
    others = sorted(gateways - {gateway_id})
    if others:
        raise Forbidden(
            f"rows of gateway(s) {others[:3]} in a batch of {gateway_id!r}: a gateway uploads "
            "only its own rows",
            "other_gateway",
        )
    # the rows' content (a reading without device_id, a KPI ratio outside [0, 1]) is
    # checked by consolidation, which quarantines such a row with its reason
    known = RECORD_TYPES[version]
    bad = sorted({str(v) for v in _distinct(table.column("record_type"))} - known)
    if bad:
        raise InvalidBatch(
            f"record_type {bad[:3]} unknown in schema v{version}; expected one of {sorted(known)}",
            "wrong_schema",
        )


def _distinct(column: pa.ChunkedArray) -> list[object]:
    values: set[object] = set()
    for chunk in column.chunks:
        if isinstance(chunk, pa.DictionaryArray):
            # only the dictionary entries that are actually used
            used = pc.unique(chunk.indices.drop_null())
            values.update(chunk.dictionary.take(used).to_pylist())
        else:
            values.update(pc.unique(chunk.drop_null()).to_pylist())
    return list(values)


def _decoded_bytes(arr: pa.Array) -> int:
    """Bytes ``arr`` takes once its dictionaries are expanded (what a consumer materialises)."""
    if isinstance(arr, pa.DictionaryArray):
        # null entries have a null length, which sum() skips (fill_null imports a lot lazily)
        lengths = pc.binary_length(arr.dictionary)
        expanded = pc.sum(pc.take(lengths, arr.indices.drop_null())).as_py() or 0
        return int(expanded) + 4 * len(arr)
    if isinstance(arr, pa.MapArray):
        return _decoded_bytes(arr.keys) + _decoded_bytes(arr.items) + 4 * len(arr)
    if isinstance(arr, pa.StructArray):
        return sum(_decoded_bytes(arr.field(k)) for k in range(arr.type.num_fields))
    if isinstance(arr, pa.ListArray):
        return _decoded_bytes(arr.values) + 4 * len(arr)
    return int(arr.nbytes)
