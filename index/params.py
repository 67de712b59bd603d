"""Checks of the numeric parameters of builds and searches: a ValueError that names the parameter."""

from __future__ import annotations

import math

import numpy as np


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in [low, high] (no upper bound if high is None)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_number(name: str, value, low: float, high: float, low_open: bool = True) -> float:
    """``value`` as a float if it is a finite number (not a bool) in (low, high], or [low, high] if not ``low_open``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number in {bound}, got {value!r}")
    return float(value)
