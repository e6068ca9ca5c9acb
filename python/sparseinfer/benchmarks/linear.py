"""Every registered format's op against its baselines on the CPU (`sparseinfer bench`, bench/).

For each format, shape, sparsity, option variant and token count m: our op and each of the
format's baselines (registry ``baselines``: dense F.linear in the same dtype, and for int8 torch's
dynamic int8 Linear and ONNX Runtime's dynamic int8 MatMul) are timed in the same process,
interleaved, on the same input; ratios are baseline ms / our ms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from .. import registry
from . import baselines as bl
from .report import Column, machine_info, results_json, table
from .timing import interleaved_ms
from .weight_bytes import bytes_read

DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (3072, 768))
DEFAULT_MS = (1, 16, 128)


@dataclass
class LinearResult:
    format: str
    options: dict            # the format's options, e.g. {"act": "dynamic", "group_size": None}
    out_features: int
    in_features: int
    m: int
    sparsity: float
    dtype: str
    path: str
    ours_ms: float
    dense_ms: float
    speedup: float           # dense_ms / ours_ms, same run
    baseline_ms: dict = field(default_factory=dict)  # every baseline timed, by name
    vs: dict = field(default_factory=dict)           # baseline ms / our ms, by name
    dense_bytes: int = 0     # weight bytes dense F.linear reads
    ours_bytes: int = 0      # weight bytes our kernel reads on this path
    bytes_ratio: float = 0.0  # dense_bytes / ours_bytes: the m=1 (memory-bound) ceiling


def options_text(options: dict) -> str:
    """Set options as text, e.g. "act=dynamic" (None values left out); "-" for none."""
    return ",".join(f"{k}={v}" for k, v in options.items() if v is not None) or "-"


def measure(spec: registry.WeightFormat, packed, baselines: dict[str, bl.Baseline], m: int,
            options: dict, min_time: float = 0.2, dtype: Optional[torch.dtype] = None) -> LinearResult:
    dtype = dtype or packed.dtype
    x = torch.randn(m, packed.cols).to(dtype)
    kwargs = spec.op_kwargs(options)
    fns = {name: b.bind(x) for name, b in baselines.items()}
    fns = {"dense": fns.pop("dense"), "ours": lambda: spec.op(x, packed, **kwargs), **fns}  # turns: as before
    t = interleaved_ms(fns, 3, min_time, {n: b.settle_s for n, b in baselines.items() if b.settle_s})
    ours = t.pop("ours")
    path = spec.path(packed, m, **kwargs)
    read = bytes_read(packed, path)
    dense_bytes = packed.dense_nbytes()
    return LinearResult(spec.name, dict(options), packed.rows, packed.cols, m, packed.sparsity,
                        str(dtype).replace("torch.", ""), path, ours, t["dense"], t["dense"] / ours,
                        t, {n: v / ours for n, v in t.items()}, dense_bytes, read, dense_bytes / max(1, read))


def cases(formats: Iterable[str], shapes, sparsities: Optional[Iterable[float]], dtype: torch.dtype,
          given_options: Optional[dict] = None):
    """(spec, shape, sparsity, dtype, pack options, op options list) of a grid: the packing runs
    once per weight, every op-option variant (e.g. int8 act) reuses it."""
    for name in formats:
        spec = registry.get(name)
        variants = spec.variants(given_options)
        pack_keys = [o.name for o in spec.options if o.name not in spec.op_options]
        by_pack: dict[tuple, list[dict]] = {}
        for v in variants:
            by_pack.setdefault(tuple((k, v[k]) for k in pack_keys), []).append(v)
        for out_f, in_f in shapes:
            for sp in (sparsities if spec.tunable_sparsity else spec.bench_sparsities):
                for pack, op_variants in by_pack.items():
                    yield spec, (out_f, in_f), sp, spec.bench_dtype or dtype, dict(pack), op_variants


def grid_size(formats, shapes, sparsities, ms, given_options=None, dtype=torch.float32) -> int:
    return sum(len(v) for *_, v in cases(formats, shapes, sparsities, dtype, given_options)) * len(list(ms))


def run_grid(formats: Iterable[str], shapes, sparsities: Optional[Iterable[float]], ms: Iterable[int],
             dtype=torch.float32, min_time: float = 0.2, given_options: Optional[dict] = None,
             skip_baselines: Iterable[str] = (), progress=None) -> list[LinearResult]:
    results = []
    for spec, (out_f, in_f), sp, dt, pack, op_variants in cases(formats, shapes, sparsities, dtype, given_options):
        dense, packed = spec.example(out_f, in_f, sp, dt, 0, **pack)
        names = [n for n in spec.baselines if n not in skip_baselines]
        built = bl.build(names, dense)
        for options in op_variants:
            for m in ms:
                results.append(measure(spec, packed, built, m, options, min_time))
                if progress is not None:
                    progress(results[-1])
    return results


def format_table(results: list[LinearResult]) -> str:
    """One table per format: its baselines' columns next to ours."""
    out = []
    for name in dict.fromkeys(r.format for r in results):
        rows = [r for r in results if r.format == name]
        extra = [b for b in dict.fromkeys(k for r in rows for k in r.baseline_ms) if b != "dense"]
        columns: list[Column] = [
            ("format", 6, lambda r: r.format),
            ("options", max(7, *(len(options_text(r.options)) for r in rows)), lambda r: options_text(r.options)),
            ("shape (out x in)", 17, lambda r: f"{r.out_features:>8d} x {r.in_features:<6d}"),
            ("m", 4, lambda r: str(r.m)), ("sparsity", 8, lambda r: f"{r.sparsity:.2f}"),
            ("path", 12, lambda r: r.path), ("dense ms", 9, lambda r: f"{r.dense_ms:.3f}"),
            ("ours ms", 9, lambda r: f"{r.ours_ms:.3f}"), ("speedup", 8, lambda r: f"{r.speedup:.2f}x")]
        for b in extra:
            columns += [(f"{b} ms", max(9, len(b) + 3), lambda r, b=b: _ms(r.baseline_ms.get(b))),
                        (f"vs {b}", max(8, len(b) + 3), lambda r, b=b: _ratio(r.vs.get(b)))]
        columns.append(("bytes ratio", 11, lambda r: f"{r.bytes_ratio:.2f}x"))
        out.append(table(rows, columns))
    return "\n\n".join(out)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ratio(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def as_json(results: list[LinearResult]) -> dict:
    used = dict.fromkeys(k for r in results for k in r.baseline_ms)
    return results_json(results, machine=machine_info(), baselines={n: bl.DESCRIBE[n] for n in used},
                        ratio="vs[name] = baseline ms / our ms, measured interleaved in the same run")
