"""Read Parquet page headers (Thrift compact protocol) to learn declared sizes before decoding.

pyarrow allocates each page's buffer from the ``uncompressed_page_size`` its header declares,
which the footer's totals do not bound; walking the headers first lets a "bomb" (a tiny page
that promises gigabytes) be refused without decompressing a byte of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Thrift compact type ids.
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY = range(9)
_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12
_MAX_DEPTH = 16

PAGE_DICTIONARY = 2


class PageFormatError(ValueError):
    """A page header is malformed or points outside its column chunk."""


@dataclass(frozen=True)
class PageHeader:
    type: int
    uncompressed_size: int
    compressed_size: int
    has_crc: bool
    header_len: int


class _Reader:
    def __init__(self, buf: memoryview, pos: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, pos, end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise PageFormatError("page header runs past the end of its column chunk")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise PageFormatError("varint longer than 64 bits in a page header")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise PageFormatError("page header field runs past its column chunk")
        self.pos += n

    def skip_value(self, ttype: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise PageFormatError("page header nests too deeply")
        if ttype in (_TRUE, _FALSE):
            return
        if ttype == _BYTE:
            self.skip(1)
        elif ttype in (_I16, _I32, _I64):
            self.varint()
        elif ttype == _DOUBLE:
            self.skip(8)
        elif ttype == _BINARY:
            self.skip(self.varint())
        elif ttype in (_LIST, _SET):
            head = self.byte()
            size = head >> 4
            if size == 15:
                size = self.varint()
            elem = head & 0x0F
            for _ in range(size):
                # booleans inside collections take one byte each
                if elem in (_TRUE, _FALSE):
                    self.skip(1)
                else:
                    self.skip_value(elem, depth + 1)
        elif ttype == _MAP:
            size = self.varint()
            if size:
                kinds = self.byte()
                for _ in range(size):
                    self.skip_value(kinds >> 4, depth + 1)
                    self.skip_value(kinds & 0x0F, depth + 1)
        elif ttype == _STRUCT:
            self.skip_struct(depth + 1)
        else:
            raise PageFormatError(f"unknown Thrift type {ttype} in a page header")

    def skip_struct(self, depth: int) -> None:
        for _fid, ttype in self.fields():
            self.skip_value(ttype, depth)

    def fields(self) -> Iterator[tuple[int, int]]:
        last = 0
        while True:
            head = self.byte()
            ttype = head & 0x0F
            if ttype == _STOP:
                return
            delta = head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            yield fid, ttype


def read_page_header(buf: memoryview, pos: int, end: int) -> PageHeader:
    """Parse the PageHeader struct at ``pos``; fields 1-4 are kept, the rest skipped."""
    r = _Reader(buf, pos, end)
    values: dict[int, int] = {}
    for fid, ttype in r.fields():
        if fid in (1, 2, 3, 4) and ttype == _I32:
            values[fid] = r.zigzag()
        else:
            r.skip_value(ttype, 1)
    if not {1, 2, 3} <= values.keys():
        raise PageFormatError("page header lacks its type or sizes")
    if values[2] < 0 or values[3] < 0:
        raise PageFormatError("page header declares a negative size")
    return PageHeader(values[1], values[2], values[3], 4 in values, r.pos - pos)


def iter_pages(buf: memoryview, start: int, length: int) -> Iterator[PageHeader]:
    """Every page header of the column chunk ``buf[start:start+length]``."""
    end = start + length
    if start < 0 or end > len(buf):
        raise PageFormatError("column chunk lies outside the file")
    pos = start
    while pos < end:
        page = read_page_header(buf, pos, end)
        pos += page.header_len + page.compressed_size
        if pos > end:
            raise PageFormatError("page data runs past the end of its column chunk")
        yield page
