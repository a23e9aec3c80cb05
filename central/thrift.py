"""A bounded reader of the Thrift compact protocol, in which Parquet footers and pages are written.

Central reads these structures from untrusted uploads itself, rather than through pyarrow's
metadata objects, for two reasons: what they *declare* must be checked before anything is
decompressed, and pyarrow 26 aborts the whole process (an exception through a ``noexcept``
path, which Python cannot catch) on some mangled footers when a column chunk's metadata is
accessed. Every read here is bounded by the buffer given, so hostile bytes raise
:class:`FormatError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator

# Thrift compact type ids.
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY = range(9)
LIST, SET, MAP, STRUCT = 9, 10, 11, 12
_MAX_DEPTH = 16


class FormatError(ValueError):
    """A Thrift structure is malformed or runs past the bytes it must stay within."""


class CompactReader:
    """Reads ``buf[pos:end]``; ``what`` names the structure in error messages."""

    def __init__(self, buf: memoryview, pos: int, end: int, what: str) -> None:
        self.buf, self.pos, self.end, self.what = buf, pos, end, what

    def byte(self) -> int:
        if self.pos >= self.end:
            raise FormatError(f"{self.what} runs past its end")
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
                raise FormatError(f"varint longer than 64 bits in {self.what}")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(f"a field of {self.what} runs past its end")
        self.pos += n

    def binary(self) -> bytes:
        n = self.varint()
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start : self.pos])

    def list_header(self) -> tuple[int, int]:
        """(element type, size) of a list or set."""
        head = self.byte()
        size = head >> 4
        if size == 15:
            size = self.varint()
        return head & 0x0F, size

    def skip_value(self, ttype: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise FormatError(f"{self.what} nests too deeply")
        if ttype in (TRUE, FALSE):
            return
        if ttype == BYTE:
            self.skip(1)
        elif ttype in (I16, I32, I64):
            self.varint()
        elif ttype == DOUBLE:
            self.skip(8)
        elif ttype == BINARY:
            self.skip(self.varint())
        elif ttype in (LIST, SET):
            elem, size = self.list_header()
            for _ in range(size):
                # booleans inside collections take one byte each
                if elem in (TRUE, FALSE):
                    self.skip(1)
                else:
                    self.skip_value(elem, depth + 1)
        elif ttype == MAP:
            size = self.varint()
            if size:
                kinds = self.byte()
                for _ in range(size):
                    self.skip_value(kinds >> 4, depth + 1)
                    self.skip_value(kinds & 0x0F, depth + 1)
        elif ttype == STRUCT:
            self.skip_struct(depth + 1)
        else:
            raise FormatError(f"unknown Thrift type {ttype} in {self.what}")

    def skip_struct(self, depth: int) -> None:
        for _fid, ttype in self.fields():
            self.skip_value(ttype, depth)

    def fields(self) -> Iterator[tuple[int, int]]:
        """(field id, type) of each field of the struct at ``pos``; the caller reads or skips
        each value before asking for the next."""
        last = 0
        while True:
            head = self.byte()
            ttype = head & 0x0F
            if ttype == STOP:
                return
            delta = head >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            yield fid, ttype
