"""Geohash as Ibis expressions, so both engines compute the cells the same way.

A geohash of ``p`` characters interleaves ``5p`` bits, longitude first. Bisecting a range
``n`` times (upper half when ``v >= mid``) picks cell ``floor((v - lo) / (hi - lo) * 2**n)``
in exact arithmetic; in floating point ``v - lo`` can round onto a cell edge, so the cell
is corrected with exact comparisons against its edges (dyadic numbers, exact in float64).
The top edge (lon 180, lat 90) belongs to the last cell. Checked against pygeohash
(tests/test_consolidate_geo.py).

Two steps keep the SQL small: ``cells`` (materialised with the devices) and
``geohash_from_cells``; written as one expression the cell would be inlined 30 times.
"""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
BITS = 15  # per axis at precision 6 (30 bits); shorter geohashes are prefixes


def _cell(value: ir.FloatingValue, lo: float, hi: float) -> ir.IntegerValue:
    n = 2**BITS
    width = (hi - lo) / n
    guess = ibis.least(((value - lo) / (hi - lo) * float(n)).floor().cast("int64"), n - 1)
    edge = lo + guess.cast("float64") * width  # exact: small integer times a dyadic width
    nxt = edge + width
    fixed = ibis.cases(
        (value < edge, guess - 1),
        ((value >= nxt) & (guess < n - 1), guess + 1),
        else_=guess,
    )
    # GREATEST skips NULLs on both engines, so a missing location is decided outside it.
    return ibis.ifelse(value.isnull(), ibis.null("int64"), ibis.greatest(fixed, 0))


def cells(lat: ir.FloatingValue, lon: ir.FloatingValue) -> tuple[ir.IntegerValue, ir.IntegerValue]:
    """(longitude cell, latitude cell) at 15 bits each; null when the location is null."""
    return _cell(lon, -180.0, 180.0), _cell(lat, -90.0, 90.0)


def geohash_from_cells(
    x15: ir.IntegerValue, y15: ir.IntegerValue, precision: int
) -> ir.StringValue:
    """The geohash of ``precision`` (1..6) characters from 15-bit cells."""
    if not 1 <= precision <= 6:
        raise ValueError(f"geohash precision {precision}: use 1..6 (cells have 15 bits per axis)")
    nbits = 5 * precision
    lon_bits, lat_bits = (nbits + 1) // 2, nbits // 2
    x = x15 // (2 ** (BITS - lon_bits))
    y = y15 // (2 ** (BITS - lat_bits))

    def bit(k: int) -> ir.IntegerValue:
        # Even positions are longitude bits, odd ones latitude, most significant first.
        v, width = (x, lon_bits) if k % 2 == 0 else (y, lat_bits)
        return (v // (2 ** (width - 1 - k // 2))) % 2

    out: ir.StringValue | None = None
    for c in range(precision):
        index = sum((bit(5 * c + b) * (2 ** (4 - b)) for b in range(5)), ibis.literal(0))
        ch = ibis.literal(ALPHABET).substr(index, 1)
        out = ch if out is None else out.concat(ch)
    assert out is not None
    return ibis.ifelse(x15.isnull() | y15.isnull(), ibis.null("string"), out)


def geohash(lat: ir.FloatingValue, lon: ir.FloatingValue, precision: int) -> ir.StringValue:
    """The geohash of (lat, lon) in one expression (fine for small tables and tests)."""
    x, y = cells(lat, lon)
    return geohash_from_cells(x, y, precision)
