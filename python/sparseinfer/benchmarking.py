"""The CSR-vs-dense measurement shared by `sparseinfer bench` and bench/ (pytest-benchmark).

Every ratio compares timings taken in the same process, interleaved, on the same inputs.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from . import build_info, ops
from .formats.csr import CSR

DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (3072, 768))
DEFAULT_SPARSITIES = (0.5, 0.7, 0.9)
DEFAULT_MS = (1, 16, 128)


@dataclass
class CsrResult:
    out_features: int
    in_features: int
    m: int
    sparsity: float
    dtype: str
    path: str
    dense_ms: float
    csr_ms: float
    speedup: float           # dense_ms / csr_ms, same run
    dense_bytes: int         # weight bytes dense F.linear reads
    csr_bytes: int           # weight bytes csr_linear reads
    bytes_ratio: float       # dense_bytes / csr_bytes: the m=1 (memory-bound) ceiling


def median_ms(fn: Callable[[], object], min_time: float = 0.2, rounds: int = 7) -> float:
    """Median over `rounds` of the mean time per call, each round lasting about min_time/rounds."""
    fn()
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


def random_pruned(out_features: int, in_features: int, sparsity: float, dtype=torch.float32,
                  seed: int = 0) -> torch.Tensor:
    """A weight with exactly round(sparsity * numel) zeros at random places."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    k = int(round(sparsity * w.numel()))
    if k:
        w.view(-1)[torch.randperm(w.numel(), generator=g)[:k]] = 0
    return w.to(dtype)


def measure_csr(out_features: int, in_features: int, m: int, sparsity: float,
                dtype=torch.float32, min_time: float = 0.2, weight: torch.Tensor | None = None,
                csr: CSR | None = None) -> CsrResult:
    w = weight if weight is not None else random_pruned(out_features, in_features, sparsity, dtype)
    csr = csr if csr is not None else CSR.from_dense(w)
    x = torch.randn(m, in_features, dtype=dtype)
    dense = lambda: F.linear(x, w)
    sparse = lambda: ops.csr_linear(x, csr)
    # Interleave rounds so machine noise hits both sides alike.
    dense_ms, csr_ms = [], []
    for _ in range(3):
        dense_ms.append(median_ms(dense, min_time / 3))
        csr_ms.append(median_ms(sparse, min_time / 3))
    d, s = statistics.median(dense_ms), statistics.median(csr_ms)
    return CsrResult(out_features, in_features, m, sparsity, str(dtype).replace("torch.", ""),
                     ops.csr_linear_path(csr, m), d, s, d / s, csr.dense_nbytes(),
                     csr.bytes_read(m), csr.dense_nbytes() / max(1, csr.bytes_read(m)))


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "sparseinfer": build_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_grid(shapes: Iterable[tuple[int, int]], sparsities: Iterable[float], ms: Iterable[int],
             dtype=torch.float32, min_time: float = 0.2, progress=None) -> list[CsrResult]:
    results = []
    for out_f, in_f in shapes:
        for sp in sparsities:
            w = random_pruned(out_f, in_f, sp, dtype)
            csr = CSR.from_dense(w)
            for m in ms:
                results.append(measure_csr(out_f, in_f, m, sp, dtype, min_time, w, csr))
                if progress is not None:
                    progress(results[-1])
    return results


def format_table(results: list[CsrResult]) -> str:
    head = (f"{'shape (out x in)':>17s} {'m':>4s} {'sparsity':>8s} {'path':>12s} "
            f"{'dense ms':>9s} {'csr ms':>9s} {'speedup':>8s} {'bytes ratio':>11s}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.out_features:>8d} x {r.in_features:<6d} {r.m:>4d} {r.sparsity:>8.2f} "
                     f"{r.path:>12s} {r.dense_ms:>9.3f} {r.csr_ms:>9.3f} {r.speedup:>7.2f}x "
                     f"{r.bytes_ratio:>10.2f}x")
    return "\n".join(lines)


def results_json(results: list[CsrResult]) -> dict:
    return {"machine": machine_info(), "baseline": "torch.nn.functional.linear (dense, same dtype)",
            "results": [asdict(r) for r in results]}
