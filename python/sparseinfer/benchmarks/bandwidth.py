"""Measured memory read bandwidth (the batch-1 decode roofline), in the same run as what it judges."""
from __future__ import annotations

import time

import torch

from .._native import _C


def read_bandwidth_gbs(megabytes: int = 1024, reps: int = 7, threads: int | None = None) -> float:
    """Peak GB/s of reading a buffer far beyond the last-level cache on torch's thread count: the
    best pass of a native AVX2 read and of torch's own sum. Best, not median: the roofline is what
    the memory allows, and on a VM two-thread bandwidth varies widely pass to pass (28-51 GB/s
    seen on one EPYC VM)."""
    if megabytes < 64 or reps < 1:
        raise ValueError(f"need megabytes >= 64 and reps >= 1, got {megabytes}, {reps}")
    threads = threads or torch.get_num_threads()
    n = megabytes * (1 << 20) // 4
    buf = torch.ones(n, dtype=torch.float32)
    native = _C.read_bandwidth_gbs(buf.data_ptr(), buf.numel() * 4, threads, reps)
    buf.sum()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        buf.sum()
        samples.append(time.perf_counter() - start)
    return max(native, buf.numel() * 4 / min(samples) / 1e9)
