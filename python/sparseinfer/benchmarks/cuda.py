"""GPU ops against cuBLAS and torch's own sparse paths (`sparseinfer bench --device cuda`), for the
registered formats that run on CUDA. Timer: timing_cuda (GPU time, L2 flushed before each call);
dense, ours and the torch baseline run interleaved on the same inputs in the same process."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from .. import registry
from . import baselines as bl
from .report import Column, gpu_info, machine_info, results_json, table
from .timing_cuda import CudaTimer
from .weight_bytes import bytes_read

DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192))
DEFAULT_SPARSITIES = (0.7, 0.9)
DEFAULT_MS = (1, 16, 128, 2048)


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
    torch_sparse: str        # torch's own sparse path timed (or "unsupported")
    torch_sparse_ms: Optional[float]
    torch_speedup: Optional[float]  # dense_ms / torch_sparse_ms
    bytes_ratio: float       # dense weight bytes / bytes our kernel reads


def cuda_formats(formats: Iterable[str]) -> list[registry.WeightFormat]:
    specs = [registry.get(f) for f in formats]
    missing = [s.name for s in specs if "cuda" not in s.devices]
    if missing:
        raise ValueError(f"no CUDA kernels for format(s) {missing}; CUDA runs "
                         f"{[s.name for s in registry.FORMATS.values() if 'cuda' in s.devices]}")
    return specs


def grid_size(formats, shapes, sparsities, ms) -> int:
    specs = cuda_formats(formats)
    per_shape = sum(len(list(sparsities)) if s.tunable_sparsity else len(s.bench_sparsities) for s in specs)
    return per_shape * len(list(shapes)) * len(list(ms))


def run_grid(formats: Iterable[str], shapes: Iterable[tuple[int, int]], sparsities: Iterable[float],
             ms: Iterable[int], dtype=torch.float16, reps: int = 50, progress=None) -> list[CudaLinearResult]:
    device = torch.device("cuda", torch.cuda.current_device())
    timer = CudaTimer(device)
    results = []
    for spec in cuda_formats(formats):
        for out_f, in_f in shapes:
            for sp in (sparsities if spec.tunable_sparsity else spec.bench_sparsities):
                w, packed = spec.example(out_f, in_f, sp, dtype)
                dense_w = w.to(device)
                packed = packed.to(device)
                built = bl.build(spec.cuda_baselines, dense_w)
                torch_name = next((n for n in spec.cuda_baselines if n != "dense"), None)
                torch_baseline = built.get(torch_name)
                for m in ms:
                    x = torch.randn(m, in_f, device=device).to(dtype)
                    dense, ours = built["dense"].bind(x), (lambda: spec.op(x, packed))
                    theirs = torch_baseline.bind(x) if torch_baseline is not None else None
                    d, s, t = [], [], []
                    for _ in range(3):  # interleaved rounds
                        d.append(timer.median_ms(dense, reps))
                        s.append(timer.median_ms(ours, reps))
                        if theirs is not None:
                            t.append(timer.median_ms(theirs, reps))
                    dm, sm = statistics.median(d), statistics.median(s)
                    tm = statistics.median(t) if t else None
                    path = spec.path(packed, m)
                    results.append(CudaLinearResult(
                        spec.name, out_f, in_f, m, packed.sparsity, str(dtype).replace("torch.", ""), path,
                        dm, sm, dm / sm, torch_name if theirs is not None else f"{torch_name}: unsupported",
                        tm, (dm / tm) if tm else None, packed.dense_nbytes() / max(1, bytes_read(packed, path))))
                    if progress is not None:
                        progress(results[-1])
                del dense_w, packed, built, torch_baseline
    return results


def format_table(results: list[CudaLinearResult]) -> str:
    columns: list[Column] = [
        ("format", 6, lambda r: r.format),
        ("shape (out x in)", 17, lambda r: f"{r.out_features:>8d} x {r.in_features:<6d}"),
        ("m", 5, lambda r: str(r.m)), ("sparsity", 8, lambda r: f"{r.sparsity:.2f}"),
        ("path", 14, lambda r: r.path), ("cuBLAS ms", 9, lambda r: f"{r.dense_ms:.4f}"),
        ("ours ms", 9, lambda r: f"{r.sparse_ms:.4f}"), ("speedup", 8, lambda r: f"{r.speedup:.2f}x"),
        ("torch sparse", 15, lambda r: f"{r.torch_sparse_ms:.4f}" if r.torch_sparse_ms else "-"),
        ("speedup", 8, lambda r: f"{r.torch_speedup:.2f}x" if r.torch_speedup else "-"),
        ("bytes ratio", 11, lambda r: f"{r.bytes_ratio:.2f}x")]
    return table(results, columns)


def as_json(results: list[CudaLinearResult]) -> dict:
    info = machine_info()
    info["gpu"] = gpu_info()
    return results_json(
        results, machine=info,
        baseline="cuBLAS dense via torch.nn.functional.linear (same dtype); torch_sparse = "
                 "torch CSR (cuSPARSE) or to_sparse_semi_structured (2:4)",
        timing="CUDA events per call, L2 flushed before each call, median of 3 interleaved "
               "rounds of medians")
