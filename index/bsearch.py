"""Binary search inside Numba kernels."""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def lower_bound(values, lo, hi, target):
    """First position in ``values[lo:hi]`` (ascending) whose value is >= ``target``; ``hi`` if there is none."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo
