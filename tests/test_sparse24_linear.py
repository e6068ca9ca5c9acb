"""sparse24_linear against the reference over every ISA tier, dtype, path and awkward shape."""
import pytest
import torch

import sparseinfer
from sparseinfer import Sparse24, ops, reference
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


def test_leading_dims_and_zero_tokens(isa):
    w = random_2_4(33, 40)
    s24 = Sparse24.from_dense(w)
    x = torch.randn(2, 3, 5, 40)
    y = ops.sparse24_linear(x, s24)
    assert y.shape == (2, 3, 5, 33)
    assert_linear_close(y.reshape(-1, 33), x.reshape(-1, 40), w)
    assert ops.sparse24_linear(torch.randn(0, 7, 40), s24).shape == (0, 7, 33)
    assert ops.sparse24_linear(torch.randn(40), s24).shape == (33,)


def test_zero_sized_weight():
    s24 = Sparse24.from_dense(torch.zeros(0, 8))
    assert ops.sparse24_linear(torch.randn(3, 8), s24).shape == (3, 0)
    s24 = Sparse24.from_dense(torch.zeros(4, 0))
    y = ops.sparse24_linear(torch.randn(3, 0), s24, torch.ones(4))
    assert torch.equal(y, torch.ones(3, 4))


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


def test_threads_follow_torch():
    w = random_2_4(512, 512)
    s24 = Sparse24.from_dense(w)
    before = torch.get_num_threads()
    try:
        for n in (3, 2, 1):
            torch.set_num_threads(n)
            for m in (1, 64):
                x = torch.randn(m, 512)
                assert_linear_close(ops.sparse24_linear(x, s24), x, w)
    finally:
        torch.set_num_threads(before)


def test_reference_module_matches():
    w = random_2_4(10, 20)
    x = torch.randn(4, 20)
    torch.testing.assert_close(reference.sparse24_linear(x, Sparse24.from_dense(w)), x @ w.T)


def test_paths_are_reported():
    assert ops.sparse24_linear_path(1) == "rows"
    assert ops.sparse24_linear_path(15) == "rows"
    assert ops.sparse24_linear_path(16) == "tokens"
    assert ops.sparse24_linear_path(128) == "tokens"


# ---------------------------------------------------------------- torch.library integration
def _op_args(s24, x, bias):
    return (x, s24.packed.values, s24.packed.meta, bias, s24.rows, s24.cols)


def test_opcheck():
    s24 = Sparse24.from_dense(random_2_4(20, 150))
    for m, bias in ((1, None), (9, torch.randn(20))):
        torch.library.opcheck(torch.ops.sparseinfer.sparse24_linear.default,
                              _op_args(s24, torch.randn(m, 150), bias))


def test_torch_compile():
    layer = sparseinfer.Sparse24Linear.from_dense(random_2_4(24, 48), torch.randn(24))
    x = torch.randn(5, 48)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


def test_raw_op_rejects_inconsistent_sizes():
    s24 = Sparse24.from_dense(random_2_4(20, 150))
    args = _op_args(s24, torch.randn(3, 150), None)
    for index, bad, match in (
        (1, args[1][:4].contiguous(), "values must have shape"),
        (2, args[2][:, :2].contiguous(), "meta must have shape"),
        (2, args[2].to(torch.int64), "meta dtype"),
        (0, torch.randn(3, 149), "x must be"),
        (3, torch.randn(19), "bias must have shape"),
    ):
        bad_args = list(args)
        bad_args[index] = bad
        with pytest.raises(ValueError, match=match):
            torch.ops.sparseinfer.sparse24_linear(*bad_args)


def test_any_meta_is_memory_safe():
    """The kernel trusts meta contents; every bit pattern must stay inside its group."""
    s24 = Sparse24.from_dense(random_2_4(8, 64))
    meta = torch.randint(-2**31, 2**31 - 1, s24.packed.meta.shape, dtype=torch.int32)
    x = torch.randn(20, 64)
    for m in (1, 20):
        y = torch.ops.sparseinfer.sparse24_linear(x[:m], s24.packed.values, meta, None, 8, 64)
        assert torch.isfinite(y).all()


# ---------------------------------------------------------------- bad input
@pytest.fixture
def small():
    return Sparse24.from_dense(random_2_4(6, 10))


@pytest.mark.parametrize("make_x,match", [
    (lambda: torch.randn(2, 10, dtype=torch.float64), "x dtype"),
    (lambda: torch.randn(2, 9), r"x must have shape \[\.\.\., 10\]"),
    (lambda: torch.randn(10, 2).T, "x must be contiguous"),
    (lambda: torch.tensor(1.0), r"x must have shape"),
    (lambda: torch.randn(2, 10, device="meta"), "x must be on the CPU"),
    (lambda: [[1.0] * 10], "x must be a torch.Tensor"),
])
def test_bad_x(small, make_x, match):
    with pytest.raises(ValueError, match=match):
        ops.sparse24_linear(make_x(), small)


@pytest.mark.parametrize("bias,match", [
    (torch.randn(5), r"bias must have shape \(6,\)"),
    (torch.randn(6, dtype=torch.float16), "bias dtype"),
    (torch.randn(12)[::2], "bias must be contiguous"),
])
def test_bad_bias(small, bias, match):
    with pytest.raises(ValueError, match=match):
        ops.sparse24_linear(torch.randn(2, 10), small, bias)


def test_bad_weight():
    with pytest.raises(ValueError, match="weight must be a sparseinfer.formats.Sparse24"):
        ops.sparse24_linear(torch.randn(2, 10), torch.randn(6, 10))
    with pytest.raises(ValueError, match="x dtype must be torch.bfloat16"):
        ops.sparse24_linear(torch.randn(2, 10), Sparse24.from_dense(random_2_4(6, 10, torch.bfloat16)))
