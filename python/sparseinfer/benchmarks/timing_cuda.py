"""The CUDA timer: GPU time from CUDA events around one call, median over many calls, with L2
flushed before each call (a 256 MB write): the weights of a real model do not sit in L2 between
uses, and a 4096x4096 fp16 weight (32 MB) would otherwise be served from an H100's 50 MB L2."""
from __future__ import annotations

import statistics
from typing import Callable

import torch

FLUSH_BYTES = 256 << 20


class CudaTimer:
    def __init__(self, device: torch.device):
        self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def median_ms(self, fn: Callable[[], object], reps: int) -> float:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        reps = max(5, min(reps, int(200 / max(start.elapsed_time(end), 1e-3))))  # ~0.2 s per median
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for start, end in events:
            self.flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)
