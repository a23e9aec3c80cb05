"""Batch validation: the contract's checks, bombs refused before decompression, fuzzed bytes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from central.errors import Forbidden, InvalidBatch, UploadRefused
from central.footer import read_column_chunks
from central.pages import iter_pages, read_page_header
from central.thrift import CompactReader
from central.validate import Limits, validate_batch
from schemas.batch import (
    BATCH_SCHEMA,
    BATCH_SCHEMA_V1,
    META_GATEWAY_ID,
    META_SCHEMA_VERSION,
    batch_metadata,
)
from tests.central_support import T0_MS, batch_rows, kpi_cols, make_batch

LIMITS = Limits(max_rows=100_000, max_decompressed_bytes=16 * 1024 * 1024)
GOOD = make_batch("gw-1", 1, n=50)


def refused(body: bytes, cls: type[UploadRefused] = InvalidBatch, gw: str = "gw-1") -> str:
    with pytest.raises(cls) as info:
        validate_batch(body, gw, LIMITS, 1)
    return f"{info.value.error}: {info.value.detail}"


def test_good_batch_facts() -> None:
    facts = validate_batch(GOOD, "gw-1", LIMITS, 1)
    assert facts.rows == 50
    assert facts.min_ts_ms == T0_MS
    assert facts.max_ts_ms == T0_MS + 49 * 30_000


def test_empty_batch_is_valid_without_time_range() -> None:
    facts = validate_batch(make_batch("gw-1", 1, n=0), "gw-1", LIMITS, 1)
    assert (facts.rows, facts.min_ts_ms, facts.max_ts_ms) == (0, None, None)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "not_parquet"),
        (b"PAR1", "not_parquet"),
        (b"hello, this is not parquet at all", "not_parquet"),
        (GOOD[:-100], "not_parquet"),
        (GOOD[:4] + b"\0" * 64 + GOOD[-8:], "not_parquet"),
    ],
)
def test_not_parquet(body: bytes, needle: str) -> None:
    assert refused(body).startswith(needle)


def test_schema_versions_1_and_2_and_the_kpi_record_type_only_in_2() -> None:
    v1 = make_batch("gw-1", 1, 30, schema=BATCH_SCHEMA_V1, metadata=batch_metadata("gw-1", 1, "1"))
    assert validate_batch(v1, "gw-1", LIMITS, 1).rows == 30
    v2 = make_batch("gw-1", 1, cols=kpi_cols("gw-1", 30, kpis=4))
    facts = validate_batch(v2, "gw-1", LIMITS, 1)
    assert facts.rows == 34 and facts.min_ts_ms == T0_MS  # a kpi row's ts: its day's start
    # a version names its schema: v2 metadata on v1 columns, v1 metadata on v2 columns
    as_v2 = make_batch("gw-1", 1, 30, schema=BATCH_SCHEMA_V1)
    assert "column 'day' missing" in refused(as_v2)
    v1_meta = batch_metadata("gw-1", 1, "1")
    assert "unexpected column 'day'" in refused(make_batch("gw-1", 1, 30, metadata=v1_meta))
    # kpi rows in a v1 file: the record type does not exist there
    cols = kpi_cols("gw-1", 30, kpis=2)
    v1_kpi = make_batch(
        "gw-1", 1, cols={k: v for k, v in cols.items() if k in BATCH_SCHEMA_V1.names},
        schema=BATCH_SCHEMA_V1, metadata=v1_meta,
    )  # fmt: skip
    assert "record_type ['kpi'] unknown in schema v1" in refused(v1_kpi)
    # kpi rows of another gateway: refused like any other row of it
    other = kpi_cols("gw-1", 30, kpis=2)
    other["gateway_id"] = [*other["gateway_id"][:-1], "gw-2"]
    assert "rows of gateway(s) ['gw-2']" in refused(make_batch("gw-1", 1, cols=other), Forbidden)


def test_wrong_schema_names_the_column() -> None:
    missing = pa.schema([f for f in BATCH_SCHEMA if f.name != "seq"])
    assert "'seq' missing" in refused(make_batch("gw-1", 1, schema=missing))
    extra = BATCH_SCHEMA.append(pa.field("colour", pa.string()))
    cols = {**batch_rows("gw-1", 5), "colour": ["red"] * 5}
    assert "unexpected column 'colour'" in refused(
        make_batch("gw-1", 1, 5, cols=cols, schema=extra)
    )
    retyped = BATCH_SCHEMA.set(BATCH_SCHEMA.get_field_index("seq"), pa.field("seq", pa.string()))
    cols = {**batch_rows("gw-1", 5), "seq": ["1"] * 5}
    assert "'seq' is string" in refused(make_batch("gw-1", 1, 5, cols=cols, schema=retyped))


def test_schema_version_and_metadata() -> None:
    meta = {**batch_metadata("gw-1", 1), META_SCHEMA_VERSION: b"3"}
    assert "schema version '3' is not supported" in refused(make_batch("gw-1", 1, metadata=meta))
    meta = {k: v for k, v in batch_metadata("gw-1", 1).items() if k != META_GATEWAY_ID}
    assert "fleetpulse.gateway_id" in refused(make_batch("gw-1", 1, metadata=meta))
    assert "does not match the batch id's sequence 1" in refused(make_batch("gw-1", 7))


def test_other_gateway_in_metadata_or_rows_is_forbidden() -> None:
    meta = batch_metadata("gw-2", 1)
    assert "gw-2" in refused(make_batch("gw-1", 1, metadata=meta), Forbidden)
    cols = batch_rows("gw-1", 10)
    cols["gateway_id"][3] = "gw-evil"
    assert "gw-evil" in refused(make_batch("gw-1", 1, 10, cols=cols), Forbidden)


def test_nulls_in_required_columns_and_unknown_record_type() -> None:
    cols = batch_rows("gw-1", 4)
    cols["record_type"][1] = "teleport"
    assert "teleport" in refused(make_batch("gw-1", 1, 4, cols=cols))
    loose = pa.schema([f.with_nullable(True) for f in BATCH_SCHEMA])
    cols = batch_rows("gw-1", 4)
    cols["ts"][2] = None
    assert "'ts' holds nulls" in refused(make_batch("gw-1", 1, 4, cols=cols, schema=loose))


def test_pages_without_checksums_refused() -> None:
    body = make_batch("gw-1", 1, write_page_checksum=False)
    assert refused(body).startswith("no_page_checksum")


def test_corrupted_page_fails_its_checksum() -> None:
    pf = pq.ParquetFile(pa.BufferReader(GOOD))
    col = pf.metadata.row_group(0).column(BATCH_SCHEMA.get_field_index("ts"))
    # flip a byte in the middle of the first data page's compressed payload
    page = read_page_header(memoryview(GOOD), col.data_page_offset, len(GOOD))
    pos = col.data_page_offset + page.header_len + page.compressed_size // 2
    bad = GOOD[:pos] + bytes([GOOD[pos] ^ 0xFF]) + GOOD[pos + 1 :]
    msg = refused(bad)
    assert msg.startswith("corrupt"), msg
    assert "checksum" in msg.lower() or "crc" in msg.lower()


def test_row_count_bomb_refused_from_footer() -> None:
    # 200k rows of near-constant data compress to a small file; the footer gives it away
    n = 200_000
    cols = batch_rows("gw-1", n, step_ms=0)
    cols["device_id"] = ["d"] * n
    cols["seq"] = [0] * n
    cols["received_at"] = [T0_MS] * n
    cols["metrics"] = [None] * n
    body = make_batch("gw-1", 1, n, cols=cols)
    assert len(body) < 200_000
    assert refused(body).startswith("too_many_rows")


def test_decompression_bomb_refused_before_decompressing() -> None:
    # one 64 MiB string of zeros: a ~10 KiB file that promises 64 MiB once decompressed
    cols = batch_rows("gw-1", 1)
    cols["detail"] = ["\0" * (64 * 1024 * 1024)]
    body = make_batch("gw-1", 1, 1, cols=cols, use_dictionary=False)
    assert len(body) < 64 * 1024
    msg = refused(body)
    assert msg.startswith("too_large_decompressed")
    assert "declares more than" in msg  # decided from the footer and page headers


def test_dictionary_expansion_counted() -> None:
    # a 64 KiB string repeated 1000 times: pages stay small (dictionary + RLE indices), the
    # data a consumer materialises is 64 MiB
    n = 1000
    cols = batch_rows("gw-1", n)
    cols["detail"] = ["x" * 65536] * n
    body = make_batch("gw-1", 1, n, cols=cols)
    assert len(body) < 64 * 1024
    assert "decodes to more than max_decompressed_bytes" in refused(body)


def test_page_walk_matches_footer_totals() -> None:
    md = pq.ParquetFile(pa.BufferReader(GOOD)).metadata
    rg = md.row_group(0)
    for j in range(rg.num_columns):
        col = rg.column(j)
        start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
        pages = list(iter_pages(memoryview(GOOD), start, col.total_compressed_size))
        assert all(p.has_crc for p in pages)
        assert sum(p.header_len + p.uncompressed_size for p in pages) == (
            col.total_uncompressed_size
        )


def _multi_rowgroup_batch() -> bytes:
    return make_batch("gw-1", 1, 300, row_group_size=100)


def test_several_row_groups() -> None:
    facts = validate_batch(_multi_rowgroup_batch(), "gw-1", LIMITS, 1)
    assert facts.rows == 300


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    cut=st.one_of(st.none(), st.integers(0, len(GOOD))),
)
# a zeroed byte in the first dictionary page: the file still decodes, with dictionary
# indices past the dictionary's end (took the validator down until it validated fully)
@example(edits=[(18, 0)], cut=None)
# a bad page header in a column whose footer path is not UTF-8: the refusal's own message
# raised UnicodeDecodeError (a 500) while pyarrow's metadata named the column
@example(edits=[(2243, 163), (5010, 222)], cut=None)
def test_mangled_batches_are_refused_or_valid_never_crash(
    edits: list[tuple[int, int]], cut: int | None
) -> None:
    """Whatever bytes arrive, validation answers with a refusal or a valid batch, never a 500."""
    body = bytearray(GOOD)
    for pos, value in edits:
        body[pos] = value
    data = bytes(body if cut is None else body[:cut])
    try:
        facts = validate_batch(data, "gw-1", LIMITS, 1)
    except UploadRefused:
        return
    assert 0 <= facts.rows <= LIMITS.max_rows


def test_footer_chunks_match_pyarrow() -> None:
    for body in (GOOD, _multi_rowgroup_batch()):
        md = pq.ParquetFile(pa.BufferReader(body)).metadata
        groups = read_column_chunks(body)
        assert len(groups) == md.num_row_groups
        for i, chunks in enumerate(groups):
            rg = md.row_group(i)  # safe on these well-formed files
            assert len(chunks) == rg.num_columns
            for j, chunk in enumerate(chunks):
                col = rg.column(j)
                assert chunk.path == col.path_in_schema
                assert chunk.total_compressed_size == col.total_compressed_size
                assert chunk.total_uncompressed_size == col.total_uncompressed_size
                assert chunk.data_page_offset == col.data_page_offset
                want = col.dictionary_page_offset if col.has_dictionary_page else None
                assert chunk.dictionary_page_offset == want


def _with_repetition(body: bytes, leaf: str, repetition: int) -> bytes:
    """``body`` with the footer's schema element ``leaf`` declared ``repetition`` (0 required,
    1 optional, 2 repeated), changed in place so the rest of the footer stays well-formed."""
    buf = memoryview(body)
    start = len(body) - 8 - int.from_bytes(body[-8:-4], "little")
    r = CompactReader(buf, start, len(body) - 8, "the footer")
    for fid, ttype in r.fields():
        if fid != 2:  # FileMetaData.schema
            r.skip_value(ttype, 1)
            continue
        _, size = r.list_header()
        for _ in range(size):
            name, at = None, -1
            for efid, etype in r.fields():
                if efid == 3:  # SchemaElement.repetition_type, a one-byte zigzag varint here
                    at = r.pos
                    r.zigzag()
                elif efid == 4:
                    name = r.binary().decode()
                else:
                    r.skip_value(etype, 2)
            if name == leaf:
                assert body[at] < 0x80
                return body[:at] + bytes([repetition * 2]) + body[at + 1 :]
    raise AssertionError(f"no schema element {leaf!r}")


# An optional leaf declared required no longer fits the definition-level histogram its
# chunk's size statistics carry. pyarrow 26 aborts the process (a C++ exception through a
# noexcept path, uncatchable) when such a chunk's metadata object is built, which validation
# did until it read the footer itself; the suite's fuzz run found it. The check runs in a
# child so a regression fails this test instead of killing the suite (or central).
def test_mangled_size_histogram_refused_not_aborted(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(_with_repetition(GOOD, "site", 0))
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from central.errors import UploadRefused
        from central.validate import Limits, validate_batch

        limits = Limits({LIMITS.max_rows}, {LIMITS.max_decompressed_bytes})
        try:
            validate_batch(Path({str(bad)!r}).read_bytes(), "gw-1", limits, 1)
        except UploadRefused as exc:
            print("refused", exc.error, exc.detail)
        """
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused corrupt"), proc.stdout
    assert "Definition level histogram size mismatch" in proc.stdout
