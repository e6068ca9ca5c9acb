"""csr_linear against the reference over every ISA tier, dtype, path and awkward shape."""
import pytest
import torch

import sparseinfer
from sparseinfer import CSR, ops, reference
from conftest import random_sparse
from tolerances import assert_linear_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
M_VALUES = [0, 1, 2, 3, 7, 16, 17, 64, 129]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bitmask", [True, False])
@pytest.mark.parametrize("m", M_VALUES)
def test_matches_reference(isa, dtype, bitmask, m):
    w = random_sparse(70, 300, 0.6, dtype)  # 300 = 2 full panels + 44; 70 rows = 1 block + 6
    bias = torch.randn(70).to(dtype)
    csr = CSR.from_dense(w, bitmask=bitmask)
    x = torch.randn(m, 300).to(dtype)
    assert_linear_close(ops.csr_linear(x, csr, bias), x, w, bias)
    assert_linear_close(ops.csr_linear(x, csr), x, w)


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 3), (130, 129), (64, 128), (200, 1000)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
def test_shapes_and_sparsities(isa, rows, cols, sparsity):
    w = random_sparse(rows, cols, sparsity)
    csr = CSR.from_dense(w)
    for m in (1, 3, 17):
        x = torch.randn(m, cols)
        assert_linear_close(ops.csr_linear(x, csr), x, w)


def test_empty_and_full_rows(isa):
    w = random_sparse(96, 260, 0.5)
    w[3] = 0
    w[10] = torch.randn(260)  # fully dense row: 128 per panel exercises the u8 count limit
    w[64:] = 0                # a whole empty row block
    for bitmask in (True, False):
        csr = CSR.from_dense(w, bitmask=bitmask)
        for m in (1, 2, 5, 33):
            x = torch.randn(m, 260)
            y = ops.csr_linear(x, csr)
            assert_linear_close(y, x, w)
            assert torch.all(y[:, 64:] == 0) and torch.all(y[:, 3] == 0)


def test_wide_k_beyond_u16(isa):
    cols = 70_001
    w = random_sparse(9, cols, 0.9)
    w[2, cols - 1] = 1.5  # last column is reachable
    csr = CSR.from_dense(w)
    assert csr.index_dtype() == torch.int32
    for m in (1, 4):
        x = torch.randn(m, cols)
        assert_linear_close(ops.csr_linear(x, csr), x, w)


def test_leading_dims_and_zero_tokens(isa):
    w = random_sparse(33, 40, 0.7)
    csr = CSR.from_dense(w)
    x = torch.randn(2, 3, 5, 40)
    y = ops.csr_linear(x, csr)
    assert y.shape == (2, 3, 5, 33)
    assert_linear_close(y.reshape(-1, 33), x.reshape(-1, 40), w)
    assert ops.csr_linear(torch.randn(0, 7, 40), csr).shape == (0, 7, 33)
    assert ops.csr_linear(torch.randn(40), csr).shape == (33,)


def test_zero_sized_weight():
    csr = CSR.from_dense(torch.zeros(0, 8))
    assert ops.csr_linear(torch.randn(3, 8), csr).shape == (3, 0)
    csr = CSR.from_dense(torch.zeros(4, 0))
    y = ops.csr_linear(torch.randn(3, 0), csr, torch.ones(4))
    assert torch.equal(y, torch.ones(3, 4))


def test_special_values_stay_local():
    """Padding and masked tails never leak inf/nan into other rows. A row whose stored weights
    touch the inf column is inf; the expand path computes 16 columns densely, so a neighbouring
    row may become nan exactly as dense F.linear would (0 * inf); empty rows stay 0."""
    w = torch.zeros(4, 20)
    w[0, 1] = 1.0
    w[1, 5] = 2.0
    x = torch.ones(2, 20)
    x[:, 5] = float("inf")
    for bitmask in (True, False):
        for isa_name in sparseinfer.build_info()["supported_isas"]:
            with sparseinfer.cpu_isa(isa_name):
                y = ops.csr_linear(x, CSR.from_dense(w, bitmask=bitmask))
                assert torch.isinf(y[:, 1]).all()
                assert bool(((y[:, 0] == 1) | (bitmask & torch.isnan(y[:, 0]))).all())
                assert torch.equal(y[:, 2:], torch.zeros(2, 2))


def test_threads_follow_torch():
    w = random_sparse(512, 512, 0.5)
    csr = CSR.from_dense(w)
    x = torch.randn(64, 512)
    before = torch.get_num_threads()
    try:
        for n in (3, 2, 1):  # grows, then shrinks: threads are made only when the count changes
            torch.set_num_threads(n)
            assert_linear_close(ops.csr_linear(x, csr), x, w)
            if n > 1:
                assert sparseinfer.build_info()["thread_pool_size"] == n
    finally:
        torch.set_num_threads(before)


def test_reference_module_matches():
    w = random_sparse(10, 20, 0.5)
    csr = CSR.from_dense(w)
    x = torch.randn(4, 20)
    torch.testing.assert_close(reference.csr_linear(x, csr), x @ w.T)


def test_paths_are_reported():
    dense_ish = CSR.from_dense(random_sparse(8, 8, 0.5), bitmask=True)
    sparse = CSR.from_dense(random_sparse(8, 8, 0.9), bitmask=False)
    assert ops.csr_linear_path(dense_ish, 1) == "rows_expand"
    assert ops.csr_linear_path(sparse, 1) == "rows_gather"
    assert ops.csr_linear_path(sparse, 128) == "tokens"


# ---------------------------------------------------------------- torch.library integration
def _op_args(csr, x, bias):
    p = csr.packed
    return (x, p.values, p.local_idx, p.counts, p.block_offsets, p.block_nnz_prefix, p.bitmask,
            bias, csr.rows, csr.cols)


@pytest.mark.parametrize("bitmask", [True, False])
def test_opcheck(bitmask):
    w = random_sparse(20, 150, 0.6)
    csr = CSR.from_dense(w, bitmask=bitmask)
    for m, bias in ((1, None), (9, torch.randn(20))):
        torch.library.opcheck(torch.ops.sparseinfer.csr_linear.default,
                              _op_args(csr, torch.randn(m, 150), bias))


def test_torch_compile():
    layer = sparseinfer.CSRLinear.from_dense(random_sparse(24, 48, 0.7), torch.randn(24))
    x = torch.randn(5, 48)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


def test_raw_op_rejects_inconsistent_sizes():
    csr = CSR.from_dense(random_sparse(20, 150, 0.6))
    args = list(_op_args(csr, torch.randn(3, 150), None))
    bad_counts = list(args)
    bad_counts[3] = args[3][:, :5].contiguous()
    with pytest.raises(ValueError, match="counts"):
        torch.ops.sparseinfer.csr_linear(*bad_counts)
    bad_values = list(args)
    bad_values[1] = args[1][:-20].contiguous()
    with pytest.raises(ValueError, match="values"):
        torch.ops.sparseinfer.csr_linear(*bad_values)
    bad_x = list(args)
    bad_x[0] = torch.randn(3, 149)
    with pytest.raises(ValueError, match="x must be"):
        torch.ops.sparseinfer.csr_linear(*bad_x)


# ---------------------------------------------------------------- bad input
@pytest.fixture
def small():
    return CSR.from_dense(random_sparse(6, 10, 0.5))


@pytest.mark.parametrize("make_x,match", [
    (lambda: torch.randn(2, 10, dtype=torch.float64), "x dtype"),
    (lambda: torch.randn(2, 9), r"x must have shape \[\.\.\., 10\]"),
    (lambda: torch.randn(10, 2).T, "x must be contiguous"),
    (lambda: torch.tensor(1.0), r"x must have shape"),
    (lambda: torch.randn(2, 10).to(torch.int32), "x dtype"),
    (lambda: torch.randn(2, 10, device="meta"), "x must be on the CPU"),
    (lambda: [[1.0] * 10], "x must be a torch.Tensor"),
])
def test_bad_x(small, make_x, match):
    with pytest.raises(ValueError, match=match):
        ops.csr_linear(make_x(), small)


@pytest.mark.parametrize("bias,match", [
    (torch.randn(5), r"bias must have shape \(6,\)"),
    (torch.randn(6, dtype=torch.float16), "bias dtype"),
    (torch.randn(12)[::2], "bias must be contiguous"),
    (torch.randn(1, 6), "bias must have shape"),
])
def test_bad_bias(small, bias, match):
    with pytest.raises(ValueError, match=match):
        ops.csr_linear(torch.randn(2, 10), small, bias)


def test_bad_weight():
    with pytest.raises(ValueError, match="weight must be a sparseinfer.formats.CSR"):
        ops.csr_linear(torch.randn(2, 10), torch.randn(6, 10))


def test_dtype_must_match_weight():
    csr = CSR.from_dense(random_sparse(6, 10, 0.5, torch.bfloat16))
    with pytest.raises(ValueError, match="x dtype must be torch.bfloat16"):
        ops.csr_linear(torch.randn(2, 10), csr)
