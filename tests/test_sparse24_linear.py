"""sparse24_linear against the reference over every ISA tier, dtype, path and awkward shape. The
contract every op keeps (bad input, leading dims, threads, opcheck, ...) is in test_op_contract.py."""
import pytest
import torch

from sparseinfer import Sparse24, ops
from conftest import random_2_4
from tolerances import assert_linear_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
M_VALUES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 64, 129]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", M_VALUES)
def test_matches_reference(isa, dtype, m):
    w = random_2_4(70, 300, dtype)  # 300 = 9 chunks + 12 columns; 70 rows = 17 quads + 2
    bias = torch.randn(70).to(dtype)
    s24 = Sparse24.from_dense(w)
    x = torch.randn(m, 300).to(dtype)
    assert_linear_close(ops.sparse24_linear(x, s24, bias), x, w, bias)
    assert_linear_close(ops.sparse24_linear(x, s24), x, w)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 2), (5, 3), (3, 5), (2, 6), (7, 7), (130, 129),
                                       (64, 128), (33, 1000), (20, 2100)])
@pytest.mark.parametrize("extra_zeros", [0.0, 0.5, 1.0])
def test_shapes_and_sparsities(isa, rows, cols, extra_zeros):
    w = random_2_4(rows, cols, extra_zeros=extra_zeros)
    s24 = Sparse24.from_dense(w)
    for m in (1, 3, 8, 17, 100):
        x = torch.randn(m, cols)
        assert_linear_close(ops.sparse24_linear(x, s24), x, w)


def test_zero_rows_stay_zero(isa):
    w = random_2_4(96, 260)
    w[3] = 0
    w[64:] = 0
    s24 = Sparse24.from_dense(w)
    for m in (1, 2, 5, 16, 33):
        x = torch.randn(m, 260)
        y = ops.sparse24_linear(x, s24)
        assert_linear_close(y, x, w)
        assert torch.all(y[:, 64:] == 0) and torch.all(y[:, 3] == 0)


def test_wide_k(isa):
    cols = 70_001
    w = random_2_4(9, cols)
    w[2, cols - 1] = 1.5  # the last column (a 1-column tail group) is reachable
    s24 = Sparse24.from_dense(w)
    for m in (1, 16):
        x = torch.randn(m, cols)
        assert_linear_close(ops.sparse24_linear(x, s24), x, w)


def test_pruned_columns_do_not_see_inf(isa):
    """Only kept slots read x: an inf under a pruned weight leaves the row finite."""
    w = torch.zeros(4, 8)
    w[0, :2] = 1.0     # group 0 keeps columns 0, 1
    w[1, 2:4] = 2.0    # group 0 keeps columns 2, 3
    x = torch.ones(17, 8)
    x[:, 3] = float("inf")
    for m in (1, 17):
        y = ops.sparse24_linear(x[:m], Sparse24.from_dense(w))
        assert torch.equal(y[:, 0], torch.full((m,), 2.0))
        assert torch.isinf(y[:, 1]).all()
        assert torch.equal(y[:, 2:], torch.zeros(m, 2))


def test_paths_are_reported():
    s24 = Sparse24.from_dense(random_2_4(8, 64))
    assert ops.sparse24_linear_path(s24, 1) == "rows"
    assert ops.sparse24_linear_path(s24, 15) == "rows"
    assert ops.sparse24_linear_path(s24, 16) == "tokens"
    assert ops.sparse24_linear_path(s24, 128) == "tokens"


def test_any_meta_is_memory_safe():
    """The kernel trusts meta contents; every bit pattern must stay inside its group."""
    s24 = Sparse24.from_dense(random_2_4(8, 64))
    meta = torch.randint(-2**31, 2**31 - 1, s24.packed.meta.shape, dtype=torch.int32)
    x = torch.randn(20, 64)
    for m in (1, 20):
        y = torch.ops.sparseinfer.sparse24_linear(x[:m], s24.packed.values, meta, None, 8, 64)
        assert torch.isfinite(y).all()
