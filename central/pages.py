"""Read Parquet page headers to learn the sizes pages declare before any is decoded.

pyarrow allocates each page's buffer from the ``uncompressed_page_size`` its header declares,
which the footer's totals do not bound; walking the headers first lets a "bomb" (a tiny page
that promises gigabytes) be refused without decompressing a byte of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .thrift import I32, CompactReader, FormatError

PAGE_DICTIONARY = 2


@dataclass(frozen=True)
class PageHeader:
    type: int
    uncompressed_size: int
    compressed_size: int
    has_crc: bool
    header_len: int


def read_page_header(buf: memoryview, pos: int, end: int) -> PageHeader:
    """Parse the PageHeader struct at ``pos``; fields 1-4 are kept, the rest skipped."""
    r = CompactReader(buf, pos, end, "a page header")
    values: dict[int, int] = {}
    for fid, ttype in r.fields():
        if fid in (1, 2, 3, 4) and ttype == I32:
            values[fid] = r.zigzag()
        else:
            r.skip_value(ttype, 1)
    if not {1, 2, 3} <= values.keys():
        raise FormatError("page header lacks its type or sizes")
    if values[2] < 0 or values[3] < 0:
        raise FormatError("page header declares a negative size")
    return PageHeader(values[1], values[2], values[3], 4 in values, r.pos - pos)


def iter_pages(buf: memoryview, start: int, length: int) -> Iterator[PageHeader]:
    """Every page header of the column chunk ``buf[start:start+length]``."""
    end = start + length
    if start < 0 or length < 0 or end > len(buf):
        raise FormatError("column chunk lies outside the file")
    pos = start
    while pos < end:
        page = read_page_header(buf, pos, end)
        pos += page.header_len + page.compressed_size
        if pos > end:
            raise FormatError("page data runs past the end of its column chunk")
        yield page
