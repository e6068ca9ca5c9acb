"""Measured memory read bandwidth (the batch-1 decode roofline), in the same run as what it judges."""
from __future__ import annotations

import statistics
import time

import torch


def read_bandwidth_gbs(megabytes: int = 1024, reps: int = 7) -> float:
    """GB/s of a multi-threaded sum over a buffer far beyond the last-level cache (torch's
    threads, as the model uses): a read-only stream, like batch-1 weight reads."""
    n = megabytes * (1 << 20) // 4
    buf = torch.ones(n, dtype=torch.float32)
    buf.sum()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        buf.sum()
        samples.append(time.perf_counter() - start)
    return buf.numel() * 4 / statistics.median(samples) / 1e9
