"""Geohash computed in the engine equals pygeohash, at random points and on cell edges."""

from __future__ import annotations

import pyarrow as pa
import pygeohash
from hypothesis import given, settings
from hypothesis import strategies as st

from central.consolidate import engine as E
from central.consolidate.geo import cells, geohash, geohash_from_cells

ENGINE = E.connect("duckdb")


def _engine_geohash(points: list[tuple[float, float]]) -> list[tuple[str, str]]:
    t = ENGINE.register(
        "pts",
        pa.table(
            {"i": range(len(points)), "lat": [p[0] for p in points], "lon": [p[1] for p in points]}
        ),
    )
    # as in production: cells materialised with the devices, characters from the cells
    x, y = cells(t.lat, t.lon)
    c = ENGINE.materialize("cells", t.select("i", x=x, y=y)).table
    g5, g6 = geohash_from_cells(c.x, c.y, 5), geohash_from_cells(c.x, c.y, 6)
    out = ENGINE.to_arrow(c.select("i", g5=g5, g6=g6).order_by("i"), "geohash")
    return list(zip(out["g5"].to_pylist(), out["g6"].to_pylist(), strict=True))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-90, 90, allow_nan=False), st.floats(-180, 180, allow_nan=False)),
        min_size=1,
        max_size=200,
    )
)
def test_matches_pygeohash(points: list[tuple[float, float]]) -> None:
    got = _engine_geohash(points)
    want = [(pygeohash.encode(a, b, 5), pygeohash.encode(a, b, 6)) for a, b in points]
    assert got == want


def test_cell_edges_and_poles() -> None:
    edges = [(i * 180 / 2**15, i * 360 / 2**15) for i in range(-(2**14), 2**14 + 1, 97)]
    edges += [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0), (45.0, 90.0)]
    want = [(pygeohash.encode(a, b, 5), pygeohash.encode(a, b, 6)) for a, b in edges]
    assert _engine_geohash(edges) == want


def test_null_location_has_no_geohash() -> None:
    t = ENGINE.register(
        "n",
        pa.table(
            {"lat": pa.array([None, 1.0], pa.float64()), "lon": pa.array([1.0, None], pa.float64())}
        ),
    )
    out = ENGINE.to_arrow(t.select(g=geohash(t.lat, t.lon, 6)), "null")
    assert out["g"].to_pylist() == [None, None]
