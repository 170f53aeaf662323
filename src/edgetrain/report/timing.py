"""Wall-clock timing for benchmarks: medians of repeated loops, so one slow call does not decide."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def _per_call(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call of ``fn()`` over a loop of at least ``min_time`` seconds."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def median_time(fn: Callable[[], object], repeats: int, min_time: float = 0.1) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` timings (after one warm-up call), each
    timing looping for at least ``min_time`` seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fn()
    return statistics.median(_per_call(fn, min_time) for _ in range(repeats))


def paired_ratio(fn: Callable[[], object], ref: Callable[[], object], repeats: int,
                 min_time: float = 0.1) -> dict[str, float]:
    """Cost of ``fn()`` relative to ``ref()``, robust to a machine whose speed drifts between seconds.

    The two are timed in alternation (``ref``, ``fn``, ``ref``, ``fn``, ...; each timing a loop of
    at least ``min_time`` seconds, after one warm-up call of each), so both see the same
    conditions; ``ratio`` is the median of the ``repeats`` per-round ratios, ``fn_s`` and ``ref_s``
    the medians of the seconds per call. Timing one function's repeats and then the other's lets a
    slow spell land on one side only: on a shared 2-core machine that moved a ratio by 2x."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    ref()
    fn()
    t_fn, t_ref = [], []
    for _ in range(repeats):
        t_ref.append(_per_call(ref, min_time))
        t_fn.append(_per_call(fn, min_time))
    ratios = [a / b for a, b in zip(t_fn, t_ref, strict=True)]
    return {"ratio": statistics.median(ratios), "fn_s": statistics.median(t_fn), "ref_s": statistics.median(t_ref)}
