"""Read the column chunks (offsets, sizes) a Parquet footer declares, bypassing pyarrow metadata.

pyarrow 26 builds a ``ColumnChunkMetaData`` by validating its size statistics in a path
that cannot raise: a mangled histogram length aborts the process (``terminate``), so central
would go down on one hostile upload. The declared offsets and sizes are all the validator
needs from a chunk, so they are read here from the footer's Thrift bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .thrift import BINARY, I64, LIST, STRUCT, CompactReader, FormatError

# FileMetaData.row_groups, RowGroup.columns, ColumnChunk.meta_data
_ROW_GROUPS, _COLUMNS, _META_DATA = 4, 1, 3
# ColumnMetaData fields
_PATH, _UNCOMPRESSED, _COMPRESSED, _DATA_PAGE, _DICTIONARY_PAGE = 3, 6, 7, 9, 11

_T = TypeVar("_T")


@dataclass(frozen=True)
class ColumnChunk:
    """Where a column chunk's pages lie and what sizes the footer declares for them."""

    path: str
    total_compressed_size: int
    total_uncompressed_size: int
    data_page_offset: int
    dictionary_page_offset: int | None  # None: the footer declares no dictionary page


def read_column_chunks(body: bytes | memoryview) -> list[list[ColumnChunk]]:
    """Each row group's column chunks, in file order, from the footer at the end of ``body``.

    Raises :class:`FormatError` when the footer is malformed or lacks a chunk's sizes.
    """
    buf = memoryview(body)
    if len(buf) < 12:
        raise FormatError("file too short for a Parquet footer")
    footer_len = int.from_bytes(buf[-8:-4], "little")
    start = len(buf) - 8 - footer_len
    if start < 4:
        raise FormatError(f"footer length {footer_len} exceeds the file")
    r = CompactReader(buf, start, len(buf) - 8, "the footer")
    groups = _field(r, _ROW_GROUPS, LIST, lambda: _list_of(r, lambda: _row_group(r)), 1)
    return groups or []


def _field(
    r: CompactReader, want: int, ttype: int, read: Callable[[], _T], depth: int
) -> _T | None:
    """Read field ``want`` (of Thrift type ``ttype``) of the struct at the reader's position
    with ``read``, skipping every other field; None when the struct lacks it."""
    found = None
    for fid, got in r.fields():
        if fid == want and got == ttype:
            found = read()
        else:
            r.skip_value(got, depth)
    return found


def _list_of(r: CompactReader, read: Callable[[], _T]) -> list[_T]:
    elem, size = r.list_header()
    if elem != STRUCT:
        raise FormatError(f"{r.what}: expected a list of structs, found element type {elem}")
    # a hostile size cannot run long: each struct takes at least one byte of the footer
    return [read() for _ in range(size)]


def _row_group(r: CompactReader) -> list[ColumnChunk]:
    return _field(r, _COLUMNS, LIST, lambda: _list_of(r, lambda: _column_chunk(r)), 2) or []


def _column_chunk(r: CompactReader) -> ColumnChunk:
    chunk = _field(r, _META_DATA, STRUCT, lambda: _column_meta(r), 3)
    if chunk is None:
        raise FormatError("a column chunk in the footer has no metadata")
    return chunk


def _column_meta(r: CompactReader) -> ColumnChunk:
    path: list[str] = []
    ints: dict[int, int] = {}
    for fid, ttype in r.fields():
        if fid == _PATH and ttype == LIST:
            elem, size = r.list_header()
            if elem != BINARY:
                raise FormatError("a column's path in the footer is not a list of strings")
            path = [r.binary().decode(errors="replace") for _ in range(size)]
        elif fid in (_UNCOMPRESSED, _COMPRESSED, _DATA_PAGE, _DICTIONARY_PAGE) and ttype == I64:
            ints[fid] = r.zigzag()
        else:
            r.skip_value(ttype, 4)
    name = ".".join(path) or "?"
    missing = {_UNCOMPRESSED, _COMPRESSED, _DATA_PAGE} - ints.keys()
    if missing:
        raise FormatError(f"column {name!r}: the footer lacks its sizes or data page offset")
    if ints[_UNCOMPRESSED] < 0 or ints[_COMPRESSED] < 0:
        raise FormatError(f"column {name!r}: the footer declares a negative size")
    return ColumnChunk(
        path=name,
        total_compressed_size=ints[_COMPRESSED],
        total_uncompressed_size=ints[_UNCOMPRESSED],
        data_page_offset=ints[_DATA_PAGE],
        dictionary_page_offset=ints.get(_DICTIONARY_PAGE),
    )
