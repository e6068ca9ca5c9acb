"""GPU sparse-vs-dense measurement for `sparseinfer bench --device cuda`.

Times are GPU time from CUDA events around one call, median over many calls, with L2 flushed
before each call (a 256 MB write): the weights of a real model do not sit in L2 between uses,
and a 4096x4096 fp16 weight (32 MB) would otherwise be served from the 50 MB L2. Dense, ours and
torch's own sparse path run interleaved on the same inputs in the same process.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from . import ops
from .benchmarking import grid_size, machine_info, sparse_weight  # noqa: F401 (grid_size: CLI)

DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192))
DEFAULT_SPARSITIES = (0.7, 0.9)
DEFAULT_MS = (1, 16, 128, 2048)
_FLUSH_BYTES = 256 << 20


@dataclass
class CudaLinearResult:
    format: str
    out_features: int
    in_features: int
    m: int
    sparsity: float
    dtype: str
    path: str
    dense_ms: float          # cuBLAS via F.linear, same dtype
    sparse_ms: float         # sparseinfer
    speedup: float           # dense_ms / sparse_ms
    torch_sparse: str        # torch's own sparse path: cuSPARSE CSR or semi-structured 2:4
    torch_sparse_ms: Optional[float]
    torch_speedup: Optional[float]  # dense_ms / torch_sparse_ms
    bytes_ratio: float       # dense weight bytes / bytes our kernel reads


class _Timer:
    def __init__(self, device: torch.device):
        self.flush = torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device=device)

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


def _torch_sparse(format: str, dense: torch.Tensor):
    """(name, fn(x)) for torch's sparse baseline, or (name, None) where it refuses the case."""
    try:
        if format == "csr":
            w = dense.to_sparse_csr()
            w @ torch.zeros(dense.shape[1], 8, dtype=dense.dtype, device=dense.device)
            return "cusparse_csr", lambda x: w @ x.T
        from torch.sparse import to_sparse_semi_structured
        w = to_sparse_semi_structured(dense)
        F.linear(torch.zeros(16, dense.shape[1], dtype=dense.dtype, device=dense.device), w)
        return "semi_structured", lambda x: F.linear(x, w)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        return f"unsupported: {str(exc).splitlines()[0][:80]}", None


def run_grid(formats: Iterable[str], shapes: Iterable[tuple[int, int]], sparsities: Iterable[float],
             ms: Iterable[int], dtype=torch.float16, reps: int = 50,
             progress=None) -> list[CudaLinearResult]:
    device = torch.device("cuda", torch.cuda.current_device())
    timer = _Timer(device)
    results = []
    for format in formats:
        for out_f, in_f in shapes:
            for sp in (sparsities if format == "csr" else (0.5,)):
                w, packed = sparse_weight(format, out_f, in_f, sp, dtype)
                dense_w = w.to(device)
                packed = packed.to(device)
                ours = (lambda x: ops.csr_linear(x, packed)) if format == "csr" else (
                    lambda x: ops.sparse24_linear(x, packed))
                path = (lambda m: ops.csr_linear_path(packed, m)) if format == "csr" else (
                    lambda m: ops.sparse24_linear_path(m, packed))
                torch_name, torch_fn = _torch_sparse(format, dense_w)
                for m in ms:
                    x = torch.randn(m, in_f, device=device).to(dtype)
                    d, s, t = [], [], []
                    for _ in range(3):  # interleaved rounds
                        d.append(timer.median_ms(lambda: F.linear(x, dense_w), reps))
                        s.append(timer.median_ms(lambda: ours(x), reps))
                        if torch_fn is not None:
                            t.append(timer.median_ms(lambda: torch_fn(x), reps))
                    dm, sm = statistics.median(d), statistics.median(s)
                    tm = statistics.median(t) if t else None
                    read = packed.bytes_read(m)
                    results.append(CudaLinearResult(
                        format, out_f, in_f, m, packed.sparsity, str(dtype).replace("torch.", ""),
                        path(m), dm, sm, dm / sm, torch_name, tm, (dm / tm) if tm else None,
                        packed.dense_nbytes() / max(1, read)))
                    if progress is not None:
                        progress(results[-1])
                del dense_w, packed, torch_fn
    return results


def format_table(results: list[CudaLinearResult]) -> str:
    head = (f"{'format':>6s} {'shape (out x in)':>17s} {'m':>5s} {'sparsity':>8s} {'path':>14s} "
            f"{'cuBLAS ms':>9s} {'ours ms':>9s} {'speedup':>8s} {'torch sparse':>15s} {'speedup':>8s} "
            f"{'bytes ratio':>11s}")
    lines = [head, "-" * len(head)]
    for r in results:
        torch_ms = f"{r.torch_sparse_ms:.4f}" if r.torch_sparse_ms else "-"
        torch_x = f"{r.torch_speedup:.2f}x" if r.torch_speedup else "-"
        lines.append(f"{r.format:>6s} {r.out_features:>8d} x {r.in_features:<6d} {r.m:>5d} "
                     f"{r.sparsity:>8.2f} {r.path:>14s} {r.dense_ms:>9.4f} {r.sparse_ms:>9.4f} "
                     f"{r.speedup:>7.2f}x {torch_ms:>15s} {torch_x:>8s} {r.bytes_ratio:>10.2f}x")
    return "\n".join(lines)


def results_json(results: list[CudaLinearResult]) -> dict:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    from . import cuda_build_info
    info = machine_info()
    info["gpu"] = {"name": props.name, "multiprocessors": props.multi_processor_count,
                   "memory_gb": round(props.total_memory / 2**30, 1),
                   "capability": f"{props.major}.{props.minor}", "torch_cuda": torch.version.cuda,
                   "sparseinfer_cuda": cuda_build_info()}
    return {"machine": info,
            "baseline": "cuBLAS dense via torch.nn.functional.linear (same dtype); torch_sparse = "
                        "torch CSR (cuSPARSE) or to_sparse_semi_structured (2:4)",
            "timing": "CUDA events per call, L2 flushed before each call, median of 3 interleaved "
                      "rounds of medians",
            "results": [asdict(r) for r in results]}
