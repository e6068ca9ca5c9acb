"""The sparse-vs-dense measurement shared by `sparseinfer bench` and bench/ (pytest-benchmark).

Every ratio compares timings taken in the same process, interleaved, on the same inputs; the
baseline is dense F.linear in the same dtype as the sparse weight.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Union

import torch
import torch.nn.functional as F

from . import build_info, ops
from .compress import prune_2_4
from .formats.csr import CSR
from .formats.sparse24 import Sparse24

FORMATS = ("csr", "2:4")
DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (3072, 768))
DEFAULT_SPARSITIES = (0.5, 0.7, 0.9)  # csr only; 2:4 is 50% by construction
DEFAULT_MS = (1, 16, 128)

Packed = Union[CSR, Sparse24]


@dataclass
class LinearResult:
    format: str
    out_features: int
    in_features: int
    m: int
    sparsity: float
    dtype: str
    path: str
    dense_ms: float
    sparse_ms: float
    speedup: float           # dense_ms / sparse_ms, same run
    dense_bytes: int         # weight bytes dense F.linear reads
    sparse_bytes: int        # weight bytes the sparse kernel reads
    bytes_ratio: float       # dense_bytes / sparse_bytes: the m=1 (memory-bound) ceiling


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


def sparse_weight(format: str, out_features: int, in_features: int, sparsity: float = 0.5,
                  dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, Packed]:
    """A random weight of the format's structure, dense and packed. 2:4 ignores `sparsity`."""
    if format == "csr":
        w = random_pruned(out_features, in_features, sparsity, dtype, seed)
        return w, CSR.from_dense(w)
    if format == "2:4":
        g = torch.Generator().manual_seed(seed)
        w = prune_2_4(torch.randn(out_features, in_features, generator=g)).to(dtype)
        return w, Sparse24.from_dense(w)
    raise ValueError(f"unknown format {format!r}; available: {FORMATS}")


def sparse_call(weight: Packed) -> tuple[Callable, Callable[[int], str]]:
    """(op(x), path(m)) for a packed weight."""
    if isinstance(weight, CSR):
        return (lambda x: ops.csr_linear(x, weight)), (lambda m: ops.csr_linear_path(weight, m))
    return (lambda x: ops.sparse24_linear(x, weight)), ops.sparse24_linear_path


def measure(format: str, out_features: int, in_features: int, m: int, sparsity: float = 0.5,
            dtype=torch.float32, min_time: float = 0.2, weight: torch.Tensor | None = None,
            packed: Packed | None = None) -> LinearResult:
    if weight is None or packed is None:
        weight, packed = sparse_weight(format, out_features, in_features, sparsity, dtype)
    op, path = sparse_call(packed)
    x = torch.randn(m, in_features, dtype=dtype)
    dense = lambda: F.linear(x, weight)
    sparse = lambda: op(x)
    # Interleave rounds so machine noise hits both sides alike.
    dense_ms, sparse_ms = [], []
    for _ in range(3):
        dense_ms.append(median_ms(dense, min_time / 3))
        sparse_ms.append(median_ms(sparse, min_time / 3))
    d, s = statistics.median(dense_ms), statistics.median(sparse_ms)
    read = packed.bytes_read(m)
    return LinearResult(format, out_features, in_features, m, packed.sparsity,
                        str(dtype).replace("torch.", ""), path(m), d, s, d / s,
                        packed.dense_nbytes(), read, packed.dense_nbytes() / max(1, read))


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


def run_grid(formats: Iterable[str], shapes: Iterable[tuple[int, int]],
             sparsities: Iterable[float], ms: Iterable[int], dtype=torch.float32,
             min_time: float = 0.2, progress=None) -> list[LinearResult]:
    results = []
    for format in formats:
        for out_f, in_f in shapes:
            for sp in (sparsities if format == "csr" else (0.5,)):
                w, packed = sparse_weight(format, out_f, in_f, sp, dtype)
                for m in ms:
                    results.append(measure(format, out_f, in_f, m, sp, dtype, min_time, w, packed))
                    if progress is not None:
                        progress(results[-1])
    return results


def grid_size(formats, shapes, sparsities, ms) -> int:
    per_shape = sum(len(sparsities) if f == "csr" else 1 for f in formats)
    return per_shape * len(shapes) * len(ms)


def format_table(results: list[LinearResult]) -> str:
    head = (f"{'format':>6s} {'shape (out x in)':>17s} {'m':>4s} {'sparsity':>8s} {'path':>12s} "
            f"{'dense ms':>9s} {'sparse ms':>9s} {'speedup':>8s} {'bytes ratio':>11s}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.format:>6s} {r.out_features:>8d} x {r.in_features:<6d} {r.m:>4d} "
                     f"{r.sparsity:>8.2f} {r.path:>12s} {r.dense_ms:>9.3f} {r.sparse_ms:>9.3f} "
                     f"{r.speedup:>7.2f}x {r.bytes_ratio:>10.2f}x")
    return "\n".join(lines)


def results_json(results: list[LinearResult]) -> dict:
    return {"machine": machine_info(), "baseline": "torch.nn.functional.linear (dense, same dtype)",
            "results": [asdict(r) for r in results]}
