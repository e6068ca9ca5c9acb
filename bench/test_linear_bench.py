"""pytest-benchmark: dense F.linear vs csr_linear and sparse24_linear.
Run: pytest bench --benchmark-only (SPARSEINFER_BENCH_THREADS sets threads, default 2).

Each sparse case also times dense in the same test and stores the ratio in extra_info.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from sparseinfer.benchmarking import (DEFAULT_MS, DEFAULT_SHAPES, DEFAULT_SPARSITIES, median_ms,
                                      sparse_call, sparse_weight)

# (format, sparsity, dtype): 2:4 is also timed with bf16 values against dense bf16.
CASES = ([("csr", sp, torch.float32) for sp in DEFAULT_SPARSITIES]
         + [("2:4", 0.5, torch.float32), ("2:4", 0.5, torch.bfloat16)])
CASE_IDS = [f"{f}-{sp}-{str(dt).replace('torch.', '')}" for f, sp, dt in CASES]


@functools.lru_cache(maxsize=4)
def _weights(format, shape, sparsity, dtype):
    return sparse_weight(format, *shape, sparsity, dtype)


@pytest.mark.parametrize("m", DEFAULT_MS, ids=lambda m: f"m{m}")
@pytest.mark.parametrize("format,sparsity,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", DEFAULT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_linear(benchmark, kind, shape, format, sparsity, dtype, m):
    w, packed = _weights(format, shape, sparsity, dtype)
    op, path = sparse_call(packed)
    x = torch.randn(m, shape[1], dtype=dtype)
    dense = lambda: F.linear(x, w)
    sparse = lambda: op(x)
    benchmark.group = f"{shape[0]}x{shape[1]} m={m} {format} sparsity={sparsity} {dtype}"
    if kind == "dense":
        benchmark(dense)
        benchmark.extra_info.update(bytes=packed.dense_nbytes())
        return
    dense_ms = median_ms(dense, 0.2)
    benchmark(sparse)
    sparse_ms = benchmark.stats.stats.median * 1e3 if benchmark.stats else median_ms(sparse, 0.2)
    benchmark.extra_info.update(
        format=format, path=path(m), dense_ms=dense_ms, sparse_ms=sparse_ms,
        speedup=dense_ms / sparse_ms, dense_bytes=packed.dense_nbytes(),
        sparse_bytes=packed.bytes_read(m), bytes_ratio=packed.dense_nbytes() / packed.bytes_read(m))
    tol = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 0.5)}[dtype]
    torch.testing.assert_close(sparse(), dense(), rtol=tol[0], atol=tol[1])
