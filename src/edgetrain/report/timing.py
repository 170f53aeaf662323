"""Wall-clock timing for benchmarks: medians of repeated loops, so one slow call does not decide."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int, min_time: float = 0.1) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` timings (after one warm-up call), each
    timing looping for at least ``min_time`` seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fn()
    times = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        times.append(dt / n)
    return statistics.median(times)
