"""Timing one call honestly: warm up, repeat until the median is stable, report median and spread.

METHOD.md defect 6: the paper timed one un-warmed call. Here a call is repeated after a warm-up until
both a minimum number of repeats and a minimum time are reached; the result is the median, the 10th
and 90th percentiles and a 95 % confidence interval of the median (from order statistics), so a
reader can see how stable it is. On CUDA every call is synchronised before and after, so the time is
the kernel's, not the launch's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class TimingOptions:
    warmup: int = 10  # calls before timing starts ...
    warmup_s: float = 0.2  # ... and at least this long
    min_repeats: int = 30  # timed calls: at least this many ...
    min_time_s: float = 1.0  # ... and for at least this long
    max_repeats: int = 10_000


def measure(fn: Callable[[], object], opts: TimingOptions, sync: Callable[[], None] | None = None) -> dict:
    """Latency of ``fn()`` in milliseconds: median, p10, p90, the median's 95 % CI, repeats."""
    sync = sync or (lambda: None)
    start = time.perf_counter()
    done = 0
    while done < opts.warmup or time.perf_counter() - start < opts.warmup_s:
        fn()
        done += 1
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        n = len(times)
        if n >= opts.max_repeats or (n >= opts.min_repeats and time.perf_counter() - start >= opts.min_time_s):
            break
    return latency_stats(times)


def latency_stats(seconds: list[float]) -> dict:
    ms = np.sort(np.asarray(seconds, dtype=np.float64) * 1e3)
    n = len(ms)
    # Distribution-free 95 % CI of the median: the order statistics n/2 -+ 1.96 sqrt(n)/2.
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half) - 1)
    return {
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "median_ci_ms": [float(ms[lo]), float(ms[hi])],
        "repeats": n,
    }
