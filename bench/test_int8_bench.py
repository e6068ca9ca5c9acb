"""pytest-benchmark: int8_linear (W8A8 dynamic and weight-only) against dense fp32 F.linear,
torch's dynamic int8 Linear and, when installed, ONNX Runtime's dynamic int8 MatMul.
Run: pytest bench/test_int8_bench.py --benchmark-only (SPARSEINFER_BENCH_THREADS, default 2).

Each int8 case also times every baseline in the same test and stores the ratios in extra_info.
"""
import functools

import pytest
import torch

from sparseinfer import ops, reference
from sparseinfer.benchmarking_int8 import DEFAULT_MS, DEFAULT_SHAPES, Baselines, measure
from sparseinfer.formats.int8 import Int8


@functools.lru_cache(maxsize=2)
def _setup(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return Baselines(w), Int8.from_dense(w)


@pytest.mark.parametrize("m", DEFAULT_MS, ids=lambda m: f"m{m}")
@pytest.mark.parametrize("act", ["dynamic", "none"])
@pytest.mark.parametrize("shape", DEFAULT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_int8_linear(benchmark, shape, act, m):
    baselines, packed = _setup(shape)
    x = torch.randn(m, shape[1])
    benchmark.group = f"int8 {shape[0]}x{shape[1]} m={m} act={act}"
    benchmark(lambda: ops.int8_linear(x, packed, act=act))
    ratios = measure(baselines, packed, m, act, min_time=0.2)
    benchmark.extra_info.update(vars(ratios))
    if act == "dynamic":
        assert torch.equal(ops.int8_linear(x, packed), reference.int8_linear(x, packed))
