"""The CPU timer: medians of wall-clock time, and interleaved rounds so that drift in machine
load hits every side of a comparison alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional


def median_ms(fn: Callable[[], object], min_time: float = 0.2, rounds: int = 7,
              inner: Optional[int] = None, warmup: int = 1) -> float:
    """Median over `rounds` of the mean time per call (ms). Each round runs `inner` calls (by
    default as many as fill about min_time / rounds, from one timed call)."""
    for _ in range(warmup):
        fn()
    if inner is None:
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-6)
        inner = max(1, int(min_time / rounds / once))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples) * 1e3


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int = 3, min_time: float = 0.2,
                   pause_after: Optional[dict[str, float]] = None) -> dict[str, float]:
    """Per name, the median over `rounds` of median_ms(fn, min_time / rounds); the functions take
    turns within every round. pause_after[name] seconds of sleep follow that function's turn
    (e.g. for a baseline whose threads keep spinning after it returns)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, min_time / rounds))
            if pause_after and name in pause_after:
                time.sleep(pause_after[name])
    return {name: statistics.median(t) for name, t in times.items()}


def interleaved_calls_s(fns: dict[str, Callable[[], object]], rounds: int = 15,
                        warmup: int = 2) -> dict[str, float]:
    """Per name, the median seconds of one call, the functions taking turns in every round (for
    calls long enough to time one at a time: model forwards, checkpoint loads)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, rounds=1, inner=1, warmup=0) / 1e3)
    return {name: statistics.median(t) for name, t in times.items()}
