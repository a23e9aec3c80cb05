"""Geohash cells decoded to lat/lon boxes (pure; the central extra has no geohash library)."""

from __future__ import annotations

from typing import NamedTuple

ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


class Box(NamedTuple):
    """A cell: south, north, west, east edges in degrees."""

    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.lat_min + self.lat_max) / 2, (self.lon_min + self.lon_max) / 2


def decode_box(cell: str) -> Box:
    """The box of a geohash; ``ValueError`` naming the character if it is not one."""
    lat = [-90.0, 90.0]
    lon = [-180.0, 180.0]
    even = True  # bits alternate, longitude first
    for ch in cell.lower():
        if ch not in _INDEX:
            raise ValueError(f"{cell!r} is not a geohash: {ch!r} is not in {ALPHABET}")
        bits = _INDEX[ch]
        for shift in range(4, -1, -1):
            half = lon if even else lat
            mid = (half[0] + half[1]) / 2
            if (bits >> shift) & 1:
                half[0] = mid
            else:
                half[1] = mid
            even = not even
    if not cell:
        raise ValueError("an empty string is not a geohash")
    return Box(lat[0], lat[1], lon[0], lon[1])
