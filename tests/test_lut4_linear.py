"""lut4_linear (formats int4 and codebook) against the reference on every ISA tier: W4A8 within
a few ulps of the reference's exact integer dot products, weight-only within the tolerance table,
awkward shapes, group sizes, dtypes, non-finite tokens and paths. The contract every op keeps
(bad input, leading dims, threads, opcheck, ...) is in test_op_contract.py."""
import pytest
import torch
import torch.nn.functional as F

from sparseinfer import Codebook, Int4, ops, reference
from tolerances import FLOOR, relative_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
M_VALUES = [0, 1, 2, 3, 7, 16, 17, 64, 129]


def _int4(rows, cols, dtype=torch.float32, group_size=128, symmetric=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Int4.from_dense(torch.randn(rows, cols, generator=g).to(dtype), group_size, symmetric)


def _codebook(rows, cols, dtype=torch.float32, group_size=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size is None else -(-cols // group_size)
    idx = torch.randint(0, 16, (rows, cols), generator=g, dtype=torch.uint8)
    return Codebook.from_indices(idx, torch.randn(rows, groups, 16, generator=g).to(dtype), group_size)


WEIGHTS = {
    "int4-g128": lambda r, c, dt: _int4(r, c, dt, 128),
    "int4-g32-asym": lambda r, c, dt: _int4(r, c, dt, 32, symmetric=False),
    "int4-channel": lambda r, c, dt: _int4(r, c, dt, None),
    "codebook-channel": lambda r, c, dt: _codebook(r, c, dt),
    "codebook-g64": lambda r, c, dt: _codebook(r, c, dt, 64),
}


def _check_dynamic(y, x, w, bias):
    exact = reference.lut4_linear(x, w, bias)
    assert y.dtype == x.dtype and y.shape == exact.shape
    bound = 1e-5 if x.dtype == torch.float32 else 2 * float(torch.finfo(x.dtype).eps)
    err = relative_error(y.float(), exact.double())
    assert err <= bound, f"{err:.3g} > {bound:.3g}"


def _check_float(y, x, w, bias):
    exact = reference.lut4_linear(x.double(), w, None if bias is None else bias.double(), act="none")
    torch_err = relative_error(F.linear(x, w.to_dense(), bias), exact)
    assert relative_error(y, exact) <= 2 * torch_err + FLOOR[x.dtype]


@pytest.mark.parametrize("kind", WEIGHTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", M_VALUES)
def test_dynamic_matches_reference(isa, kind, dtype, m):
    w = WEIGHTS[kind](70, 300, dtype)  # 70 rows = 17 blocks + 2; 300 = 4 chunks + 44
    x = torch.randn(m, 300).to(dtype)
    for bias in (torch.randn(70).to(dtype), None):
        _check_dynamic(ops.lut4_linear(x, w, bias), x, w, bias)


@pytest.mark.parametrize("kind", WEIGHTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 5, 17])
def test_weight_only_matches_reference(isa, kind, dtype, m):
    w = WEIGHTS[kind](70, 300, dtype)
    x = torch.randn(m, 300).to(dtype)
    bias = torch.randn(70).to(dtype)
    _check_float(ops.lut4_linear(x, w, bias, act="none"), x, w, bias)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 63), (5, 3), (4, 64), (17, 65), (33, 1000), (9, 2100)])
@pytest.mark.parametrize("kind", ["int4-g32-asym", "int4-channel", "codebook-g64"])
def test_awkward_shapes(isa, rows, cols, kind):
    w = WEIGHTS[kind](rows, cols, torch.float32)
    for m in (1, 3, 8):
        x = torch.randn(m, cols)
        _check_dynamic(ops.lut4_linear(x, w), x, w, None)
        _check_float(ops.lut4_linear(x, w, act="none"), x, w, None)


def test_long_rows_do_not_overflow(isa):
    """int16 pair sums of int4 levels widen every 256 columns: extreme levels and activations
    over a long per-channel row stay exact."""
    rows, cols = 8, 9000
    q = torch.full((rows, cols), 7, dtype=torch.int8)
    q[1::2] = -8
    w = Int4.from_quantized(q, torch.full((rows, 1), 0.01), None, None)
    x = torch.full((2, cols), 3.0)
    x[1] = -3.0
    _check_dynamic(ops.lut4_linear(x, w), x, w, None)
    extreme = Codebook.from_indices(torch.full((rows, cols), 15, dtype=torch.uint8),
                                    torch.linspace(-1, 1, 16).repeat(rows, 1, 1))
    _check_dynamic(ops.lut4_linear(x, extreme), x, extreme, None)


@pytest.mark.parametrize("kind", ["int4-g128", "codebook-channel"])
def test_nonfinite_tokens_take_the_float_path(isa, kind):
    w = WEIGHTS[kind](9, 130, torch.float32)
    x = torch.randn(4, 130)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    y = ops.lut4_linear(x, w)
    assert bool(torch.isnan(y[1]).all())
    assert not bool(torch.isfinite(y[2]).any())
    for t in (0, 3):  # the other tokens are unaffected
        _check_dynamic(y[t:t + 1], x[t:t + 1], w, None)


def test_dynamic_error_against_the_exact_weights():
    """W4A8's only extra error is the per-token int8 activation (and the codebook's 7-bit grid)."""
    torch.manual_seed(0)
    for w in (_int4(64, 512), _codebook(64, 512)):
        x = torch.randn(16, 512)
        exact = x.double() @ w.to_dense(torch.float64).T
        assert relative_error(ops.lut4_linear(x, w), exact) < 0.02


def test_paths_follow_the_isa(isa):
    w = _int4(8, 64)
    for act, suffix in (("dynamic", "_dynamic"), ("none", "_float")):
        path = ops.lut4_linear_path(w, 1, act)
        assert path == ("reference" if isa == "reference" else "avx2") + suffix
