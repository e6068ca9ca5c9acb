"""pytest-benchmark: every registered format's op against its baselines (dense F.linear in the
same dtype; int8 also torch's dynamic int8 Linear and, when installed, ONNX Runtime), one case
list from the format registry. Run: pytest bench --benchmark-only (SPARSEINFER_BENCH_THREADS sets
threads, default 2). Each case also times its baselines in the same test (interleaved, the
`sparseinfer bench` measurement) and stores the ratios in extra_info.

Rows with m <= 16 are timed cold, as `sparseinfer bench` does: the benchmarked call rotates through
copies of the weight holding >= 4x the last-level cache (SPARSEINFER_LLC overrides the detected
size), and extra_info holds the cold and the warm (cache) figures. With --benchmark-disable (the CI
pass) no copies are made: one call, and the warm measurement only.
"""
import functools

import pytest
import torch

from sparseinfer import registry
from sparseinfer.benchmarks import baselines
from sparseinfer.benchmarks.linear import DEFAULT_MS, DEFAULT_SHAPES, measure, options_text
from sparseinfer.benchmarks.streaming import COLD_MAX_M, Streaming, build_cold_set, rotate
from sparseinfer.benchmarks.weight_bytes import bytes_read_at

# (format, sparsity, dtype, options): each format's bench sparsities and option variants, and
# 2:4 also with bf16 values against dense bf16.
CASES = [(spec.name, sp, spec.bench_dtype or torch.float32, options)
         for spec in registry.FORMATS.values() for sp in spec.bench_sparsities for options in spec.variants()]
CASES += [("2:4", 0.5, torch.bfloat16, {})]
CASE_IDS = ["-".join([f, str(sp), str(dt).replace("torch.", "")] + ([options_text(o)] if o else []))
            for f, sp, dt, o in CASES]
TOLERANCE = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 0.5)}


@functools.lru_cache(maxsize=4)
def _weights(format, shape, sparsity, dtype, pack):
    spec = registry.get(format)
    dense, packed = spec.example(*shape, sparsity, dtype, 0, **dict(pack))
    return dense, packed, baselines.build(spec.baselines, dense)


@functools.lru_cache(maxsize=1)  # each holds >= 4 x LLC per side: keep one
def _cold(format, shape, sparsity, dtype, pack, op_options):
    _, packed, built = _weights(format, shape, sparsity, dtype, pack)
    read = bytes_read_at(packed, 1, **dict(op_options))
    return build_cold_set(packed, read, built, Streaming.detect())


@pytest.mark.parametrize("m", DEFAULT_MS, ids=lambda m: f"m{m}")
@pytest.mark.parametrize("format,sparsity,dtype,options", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", DEFAULT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["dense", "ours"])
def test_linear(benchmark, kind, shape, format, sparsity, dtype, options, m):
    spec = registry.get(format)
    op_options = spec.op_kwargs(options)
    pack = tuple((k, v) for k, v in options.items() if k not in op_options)
    w, packed, built = _weights(format, shape, sparsity, dtype, pack)
    x = torch.randn(m, shape[1], dtype=dtype)
    benchmark.group = f"{shape[0]}x{shape[1]} m={m} {format} sparsity={sparsity} {dtype} {options_text(options)}"
    cold = None
    if m <= COLD_MAX_M and not benchmark.disabled:
        cold = _cold(format, shape, sparsity, dtype, pack, tuple(sorted(op_options.items())))
    benchmark.extra_info.update(cache="cold" if cold else "warm")
    if kind == "dense":
        dense_copies = cold.baselines.get("dense", [built["dense"]]) if cold else [built["dense"]]
        benchmark(rotate([b.bind(x) for b in dense_copies]))
        benchmark.extra_info.update(bytes=packed.dense_nbytes())
        return
    ours = lambda: spec.op(x, packed, **op_options)  # noqa: E731
    benchmark(rotate([lambda p=p: spec.op(x, p, **op_options) for p in cold.ours]) if cold else ours)
    ratios = measure(spec, packed, built, m, options, min_time=0.2, cold=cold)
    benchmark.extra_info.update(vars(ratios))
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(ours(), spec.reference(x, packed, **op_options).to(dtype), rtol=rtol, atol=atol)
