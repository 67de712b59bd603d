"""Shared timing helpers of the benchmarks (torch-free, so every benchmark process can import them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm


def latency_summary(seconds: Sequence[float], digits: int | None = None) -> dict:
    """mean/p50/p99 in milliseconds (rounded to ``digits`` if given)."""
    ms = np.asarray(seconds) * 1000
    out = {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
    return {k: round(v, digits) for k, v in out.items()} if digits is not None else out


def time_each(fn: Callable, items: Sequence, warmup: int = 5, desc: str | None = None) -> tuple[list, list[float]]:
    """Call ``fn`` on every item, one at a time after ``warmup`` untimed calls; (results, seconds per call).
    ``desc`` shows a progress bar."""
    for item in items[:warmup]:
        fn(item)
    results, seconds = [], []
    for item in tqdm(items, desc=desc, unit="q", leave=False, dynamic_ncols=True, disable=desc is None):
        started = time.perf_counter()
        results.append(fn(item))
        seconds.append(time.perf_counter() - started)
    return results, seconds
