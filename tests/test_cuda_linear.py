"""CUDA kernels against the reference (run on a GPU; skipped with the reason elsewhere)."""
import pytest
import torch

import sparseinfer
from sparseinfer import ops
from sparseinfer._native import cuda_built
from sparseinfer.ops.sparse24 import _cuda_native as sparse24_cuda_native
from sparseinfer.formats.csr import CSR
from sparseinfer.formats.sparse24 import Sparse24

from conftest import random_2_4, random_sparse
from tolerances import assert_linear_close

if not cuda_built():
    pytest.skip("this build has no CUDA module (no nvcc at build time)", allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip("no CUDA device on this machine (the CUDA tests run on a lent GPU; see "
                "bench/results/cuda_tests_*.txt)", allow_module_level=True)

DEV = torch.device("cuda", torch.cuda.current_device())
HALF = (torch.float16, torch.bfloat16)


def _x(m, cols, dtype, lead=()):
    return torch.randn(*lead, m, cols, device=DEV).to(dtype)


def _check(y, x, dense, bias=None):
    assert y.device == x.device and not torch.isnan(y).any()
    assert_linear_close(y.reshape(-1, dense.shape[0]), x.reshape(-1, dense.shape[1]), dense, bias)


# ------------------------------------------------------------------------------ CSR
@pytest.mark.parametrize("dtype", HALF + (torch.float32,))
@pytest.mark.parametrize("rows,cols,sparsity", [(1, 1, 0.0), (7, 5, 0.5), (33, 2049, 0.7),
                                                (130, 300, 0.9), (64, 4100, 0.5), (9, 70, 1.0)])
def test_csr_matches_reference(rows, cols, sparsity, dtype):
    w = random_sparse(rows, cols, sparsity, dtype)
    csr = CSR.from_dense(w).to(DEV)
    dense = w.to(DEV)
    bias = torch.randn(rows, device=DEV).to(dtype)
    for m in (1, 2, 3, 5, 8, 9, 16, 17, 33, 64, 65, 200):
        x = _x(m, cols, dtype)
        y = ops.csr_linear(x, csr, bias if m % 2 else None)
        _check(y, x, dense, bias if m % 2 else None)


def test_csr_large_k_many_segments_and_3d_input():
    w = random_sparse(48, 11008, 0.7, torch.float16)
    csr = CSR.from_dense(w).to(DEV)
    x = _x(5, 11008, torch.float16, lead=(2,))
    y = ops.csr_linear(x, csr)
    assert y.shape == (2, 5, 48)
    _check(y, x, w.to(DEV))


def test_csr_zero_tokens_and_zero_rows():
    csr = CSR.from_dense(random_sparse(12, 40, 0.5, torch.float16)).to(DEV)
    assert ops.csr_linear(_x(0, 40, torch.float16), csr).shape == (0, 12)
    empty = CSR.from_dense(torch.zeros(0, 40, dtype=torch.float16)).to(DEV)
    assert ops.csr_linear(_x(3, 40, torch.float16), empty).shape == (3, 0)


def test_csr_paths():
    csr = CSR.from_dense(random_sparse(8, 8, 0.5, torch.float16)).to(DEV)
    assert ops.csr_linear_path(csr, 1) == "rows"
    assert ops.csr_linear_path(csr, ops.CSR_CUDA_MAX_M + 1) == "dense_expand"


# ------------------------------------------------------------------------------ 2:4
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows,cols", [(1, 4), (16, 32), (17, 40), (33, 130), (128, 64),
                                       (200, 1000), (256, 4096)])
def test_sparse24_matches_reference(rows, cols, dtype):
    w = random_2_4(rows, cols, dtype)
    s24 = Sparse24.from_dense(w).to(DEV)
    dense = w.to(DEV)
    bias = torch.randn(rows, device=DEV).to(dtype)
    for m in (1, 2, 7, 8, 9, 16, 17, 33, 64, 65, 128, 129, 300):
        x = _x(m, cols, dtype)
        b = bias if m % 2 else None
        _check(ops.sparse24_linear(x, s24, b), x, dense, b)


def test_sparse24_fp32_expands_and_matches():
    w = random_2_4(40, 96)
    s24 = Sparse24.from_dense(w).to(DEV)
    assert ops.sparse24_linear_path(s24, 8) == "dense_expand"
    x = _x(8, 96, torch.float32)
    _check(ops.sparse24_linear(x, s24), x, w.to(DEV))


def test_sparse24_paths_and_3d_and_unaligned_x():
    w = random_2_4(64, 256, torch.float16)
    s24 = Sparse24.from_dense(w).to(DEV)
    assert ops.sparse24_linear_path(s24, 16) == "mma_sp_splitk"
    assert ops.sparse24_linear_path(s24, 1024) == "mma_sp_tiled"
    x = _x(3, 256, torch.float16, lead=(2,))
    y = ops.sparse24_linear(x, s24)
    assert y.shape == (2, 3, 64)
    _check(y, x, w.to(DEV))
    base = torch.randn(3 * 256 + 1, device=DEV).to(torch.float16)
    x_off = base[1:].view(3, 256)  # contiguous but not 16-byte aligned
    _check(ops.sparse24_linear(x_off, s24), x_off, w.to(DEV))


def test_sparse24_inf_under_pruned_weights_is_not_read():
    w = torch.randn(32, 64)
    w[:, 0] = 0  # every group 0..3 keeps two of columns 1..3: no slot points at column 0
    w = sparseinfer.compress.prune_2_4(w).half()
    s24 = Sparse24.from_dense(w).to(DEV)
    x = _x(4, 64, torch.float16)
    x[:, 0] = float("inf")
    for m in (4, 1):
        assert torch.isfinite(ops.sparse24_linear(x[:m], s24)).all()
    x2 = torch.cat([x] * 40)  # the tiled kernel
    assert torch.isfinite(ops.sparse24_linear(x2, s24)).all()


# ------------------------------------------------------------------------------ API
def test_bad_inputs_raise_clear_errors():
    csr = CSR.from_dense(random_sparse(8, 16, 0.5, torch.float16)).to(DEV)
    s24 = Sparse24.from_dense(random_2_4(8, 16, torch.float16)).to(DEV)
    for op, w in ((ops.csr_linear, csr), (ops.sparse24_linear, s24)):
        with pytest.raises(ValueError, match="must be on cuda"):
            op(torch.randn(2, 16).half(), w)
        with pytest.raises(ValueError, match="dtype"):
            op(torch.randn(2, 16, device=DEV), w)
        with pytest.raises(ValueError, match="shape"):
            op(torch.randn(2, 15, device=DEV).half(), w)
        with pytest.raises(ValueError, match="bias"):
            op(torch.randn(2, 16, device=DEV).half(), w, torch.randn(7, device=DEV).half())
    with pytest.raises(ValueError, match="seg_ptr"):
        torch.ops.sparseinfer.csr_linear_cuda(torch.randn(2, 16, device=DEV).half(), csr.packed.values,
                                              csr.packed.index, csr.packed.seg_ptr[:-1], None, 8, 16)
    with pytest.raises(ValueError, match="meta"):
        torch.ops.sparseinfer.sparse24_linear_cuda(torch.randn(2, 16, device=DEV).half(),
                                                   s24.packed.values, s24.packed.meta[:, :0], None, 8, 16)


def test_opcheck():
    csr = CSR.from_dense(random_sparse(20, 150, 0.6, torch.float16)).to(DEV)
    s24 = Sparse24.from_dense(random_2_4(20, 152, torch.float16)).to(DEV)
    for m, bias in ((1, None), (9, torch.randn(20, device=DEV).half())):
        p = csr.packed
        torch.library.opcheck(torch.ops.sparseinfer.csr_linear_cuda.default,
                              (_x(m, 150, torch.float16), p.values, p.index, p.seg_ptr, bias, 20, 150))
        q = s24.packed
        torch.library.opcheck(torch.ops.sparseinfer.sparse24_linear_cuda.default,
                              (_x(m, 152, torch.float16), q.values, q.meta, bias, 20, 152))


def test_cuda_graph_capture_and_replay():
    csr_layer = sparseinfer.CSRLinear.from_dense(random_sparse(64, 256, 0.8), torch.randn(64)).half().cuda()
    s24_layer = sparseinfer.Sparse24Linear.from_dense(random_2_4(64, 256), torch.randn(64)).half().cuda()
    x = _x(4, 256, torch.float16)
    for layer in (csr_layer, s24_layer):
        layer(x)  # warm up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = layer(x)
        x.copy_(_x(4, 256, torch.float16))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(y, layer(x))


def test_modules_move_between_devices_and_keep_state():
    w, b = random_sparse(24, 64, 0.7), torch.randn(24)
    for layer in (sparseinfer.CSRLinear.from_dense(w, b),
                  sparseinfer.Sparse24Linear.from_dense(random_2_4(24, 64), b)):
        x = torch.randn(3, 64)
        expected = layer(x)
        gpu = layer.half().cuda()
        assert gpu.weight.device.type == "cuda" and gpu.bias.device.type == "cuda"
        y = gpu(x.half().cuda())
        torch.testing.assert_close(y.float().cpu(), expected, atol=0.05, rtol=0.02)
        state = gpu.state_dict()
        assert all(t.device.type == "cpu" for k, t in state.items() if k != "bias")
        back = gpu.float().cpu()
        assert back.weight.device.type == "cpu"
        torch.testing.assert_close(back(x), expected, atol=0.05, rtol=0.02)
        clone = type(layer)(64, 24).cuda()
        clone.load_state_dict(gpu.state_dict())
        assert clone.weight.device.type == "cuda"


def test_formats_round_trip_through_the_gpu():
    w = random_sparse(37, 2100, 0.6, torch.bfloat16)
    csr = CSR.from_dense(w).to(DEV)
    csr.validate()
    assert torch.equal(csr.to_dense().cpu(), w) and torch.equal(csr.to("cpu").to_dense(), w)
    s = random_2_4(37, 200, torch.float16)
    s24 = Sparse24.from_dense(s.to(DEV))
    assert s24.is_cuda
    s24.validate()
    assert torch.equal(s24.to_dense().cpu(), s) and torch.equal(s24.to("cpu").to_dense(), s)
    compressed, bitmask, shape = s24.to_bitmask()
    assert torch.equal(Sparse24.from_bitmask(compressed, bitmask, shape).to_dense(), s)


@pytest.mark.parametrize("dtype", HALF)
def test_sparse24_every_kernel_at_every_m(dtype):
    w = random_2_4(80, 200, dtype)
    s24 = Sparse24.from_dense(w).to(DEV)
    p = s24.packed
    bias = torch.randn(80, device=DEV).to(dtype)
    for path in (1, 2):  # split-K (in passes of 64 tokens above 64) and tiled
        for m in (1, 9, 64, 65, 130, 257):
            x = _x(m, 200, dtype)
            y = sparse24_cuda_native(x, p.values, p.meta, bias, 80, 200, path)
            _check(y, x, w.to(DEV), bias)
