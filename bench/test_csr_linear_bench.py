"""pytest-benchmark: dense F.linear vs csr_linear. Run: pytest bench --benchmark-only

Each csr case also times dense in the same test and stores the ratio in extra_info.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from sparseinfer import CSR, ops
from sparseinfer.benchmarking import (DEFAULT_MS, DEFAULT_SHAPES, DEFAULT_SPARSITIES,
                                      median_ms, random_pruned)


@functools.lru_cache(maxsize=4)
def _weights(shape, sparsity):
    w = random_pruned(*shape, sparsity)
    return w, CSR.from_dense(w)


@pytest.mark.parametrize("m", DEFAULT_MS)
@pytest.mark.parametrize("sparsity", DEFAULT_SPARSITIES)
@pytest.mark.parametrize("shape", DEFAULT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_linear(benchmark, kind, shape, sparsity, m):
    w, csr = _weights(shape, sparsity)
    x = torch.randn(m, shape[1])
    dense = lambda: F.linear(x, w)
    sparse = lambda: ops.csr_linear(x, csr)
    benchmark.group = f"{shape[0]}x{shape[1]} m={m} sparsity={sparsity}"
    if kind == "dense":
        benchmark(dense)
        benchmark.extra_info.update(bytes=csr.dense_nbytes())
        return
    dense_ms = median_ms(dense, 0.2)
    benchmark(sparse)
    csr_ms = benchmark.stats.stats.median * 1e3 if benchmark.stats else median_ms(sparse, 0.2)
    benchmark.extra_info.update(
        path=ops.csr_linear_path(csr, m), dense_ms=dense_ms, csr_ms=csr_ms,
        speedup=dense_ms / csr_ms, dense_bytes=csr.dense_nbytes(), csr_bytes=csr.bytes_read(m),
        bytes_ratio=csr.dense_nbytes() / csr.bytes_read(m))
    torch.testing.assert_close(sparse(), dense(), rtol=1e-4, atol=1e-3)
