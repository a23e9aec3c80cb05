"""Interval arithmetic on sorted numpy arrays: merge, measure overlaps, count slot starts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def merge_intervals(starts: F64, ends: F64) -> tuple[F64, F64]:
    """Union of [start, end) intervals as sorted, disjoint intervals (empty ones dropped)."""
    keep = ends > starts
    s, e = starts[keep], ends[keep]
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    # a new run starts where an interval begins after everything before it has ended
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, s.size - 1)
    return s[first], reach[last]


@dataclass(frozen=True)
class Coverage:
    """Sorted disjoint intervals with a prefix sum, to measure overlaps in O(log n)."""

    starts: F64
    ends: F64
    # before[i]: total length of intervals 0..i-1
    before: F64

    @classmethod
    def of(cls, starts: F64, ends: F64) -> Coverage:
        s, e = merge_intervals(starts, ends)
        return cls(s, e, np.concatenate(([0.0], np.cumsum(e - s)))[:-1])

    def measure_below(self, x: F64) -> F64:
        """|coverage ∩ (-inf, x)| for each x."""
        if self.starts.size == 0:
            return np.zeros_like(x)
        i = np.searchsorted(self.starts, x, side="right") - 1
        j = np.maximum(i, 0)
        inside = np.clip(x - self.starts[j], 0.0, self.ends[j] - self.starts[j])
        return np.where(i >= 0, self.before[j] + inside, 0.0)

    def measure(self, a: F64, b: F64) -> F64:
        """|coverage ∩ [a, b)| for each pair (0 where b <= a)."""
        return np.where(b > a, self.measure_below(b) - self.measure_below(a), 0.0)

    def contains(self, x: F64) -> npt.NDArray[np.bool_]:
        """Whether each point lies in the coverage."""
        if self.starts.size == 0:
            return np.zeros(x.shape, dtype=bool)
        i = np.searchsorted(self.starts, x, side="right") - 1
        j = np.maximum(i, 0)
        return (i >= 0) & (x < self.ends[j])

    def slot_starts_in(self, a: F64, b: F64, d0: float, h: F64) -> I64:
        """For each (a, b, h): how many slot starts d0 + i*h lie in coverage ∩ [a, b)."""
        out = np.zeros(a.shape, dtype=np.int64)
        if self.starts.size == 0:
            return out
        # intervals j0..j1-1 overlap [a, b)
        j0 = np.searchsorted(self.ends, a, side="right")
        j1 = np.searchsorted(self.starts, b, side="left")
        for k in np.flatnonzero(j1 > j0):
            s = np.maximum(self.starts[j0[k] : j1[k]], a[k])
            e = np.minimum(self.ends[j0[k] : j1[k]], b[k])
            # slot starts below x (x >= d0): ceil((x - d0) / h)
            out[k] = int(np.sum(np.ceil((e - d0) / h[k]) - np.ceil((s - d0) / h[k])))
        return out


def distinct(keys: I64) -> I64:
    """Sorted distinct values (a sort and a diff beat np.unique's hashing on big int arrays)."""
    if keys.size == 0:
        return keys
    k = np.sort(keys)
    return k[np.append(True, k[1:] != k[:-1])]


def packed_key(major: I64, minor_ms: F64, width: int = 1) -> I64 | None:
    """One int64 sort key ordering by (major, minor_ms), or None when it would overflow.

    One argsort of a packed key is several times faster than np.lexsort of the parts;
    ``width`` leaves room for a small tie-breaker added by the caller (key * width + x).
    """
    if major.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo = float(minor_ms.min())
    span = int(float(minor_ms.max()) - lo) + 1
    if (int(major.max()) + 1) * span * width >= 2**62:
        return None
    return major * span + (minor_ms - lo).astype(np.int64)
