"""int8_linear against the reference: W8A8 bit-exact on every ISA tier, weight-only within the
tolerance table, the documented error bound against fp32, overflow limits and bad native arguments.
The contract every op keeps (bad input, leading dims, threads, opcheck, ...) is in test_op_contract.py."""
import pytest
import torch

import sparseinfer
from sparseinfer import Int8, ops, reference
from sparseinfer._native import _C, DTYPE_CODES
from tolerances import FLOOR, relative_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
M_VALUES = [0, 1, 2, 3, 7, 8, 16, 17, 33, 64, 129]
GROUPS = [None, 32, 64, 128]


def _weight(rows, cols, dtype=torch.float32, group_size=None):
    return Int8.from_dense(torch.randn(rows, cols).to(dtype), group_size)


@pytest.mark.parametrize("group_size", GROUPS, ids=lambda g: f"g{g}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", M_VALUES)
def test_dynamic_is_bit_exact(isa, dtype, m, group_size):
    q = _weight(70, 300, dtype, group_size)  # 70 rows = 4 blocks + 6; 300 = 4 K blocks + 44
    bias = torch.randn(70).to(dtype)
    x = torch.randn(m, 300).to(dtype)
    for b in (bias, None):
        y = ops.int8_linear(x, q, b)
        assert y.dtype == dtype and y.shape == (m, 70)
        assert torch.equal(y, reference.int8_linear(x, q, b)), ops.int8_linear_path(q, m)


@pytest.mark.parametrize("group_size", GROUPS, ids=lambda g: f"g{g}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, 17, 64])
def test_weight_only_matches_reference(isa, dtype, m, group_size):
    q = _weight(70, 300, dtype, group_size)
    bias = torch.randn(70).to(dtype)
    x = torch.randn(m, 300).to(dtype)
    y = ops.int8_linear(x, q, bias, act="none")
    exact = reference.int8_linear(x.double(), q, bias.double(), act="none")
    torch_err = relative_error(torch.nn.functional.linear(x, q.to_dense(), bias), exact)
    assert relative_error(y, exact) <= 2 * torch_err + FLOOR[dtype]


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 63), (5, 3), (16, 64), (17, 65), (33, 1000),
                                       (130, 129), (20, 2100)])
@pytest.mark.parametrize("group_size", [None, 32, 96], ids=lambda g: f"g{g}")
def test_awkward_shapes(isa, rows, cols, group_size):
    q = _weight(rows, cols, group_size=group_size)
    for m in (1, 3, 8, 17, 40):
        x = torch.randn(m, cols)
        assert torch.equal(ops.int8_linear(x, q), reference.int8_linear(x, q))
        exact = reference.int8_linear(x.double(), q, act="none")
        assert relative_error(ops.int8_linear(x, q, act="none"), exact) < 1e-5


def test_paths_follow_the_isa():
    q, q32 = _weight(64, 256), _weight(64, 256, group_size=32)
    supported = sparseinfer.build_info()["supported_isas"]
    with sparseinfer.cpu_isa("reference"):
        assert ops.int8_linear_path(q, 128) == "reference"
    if "avx2" in supported:
        with sparseinfer.cpu_isa("avx2"):
            assert ops.int8_linear_path(q, 128) == "avx2_rows"
            assert ops.int8_linear_path(q, 1, act="none") == "dequant_rows"
            assert ops.int8_linear_path(q, 3, act="none") == "dequant_rows"
            assert ops.int8_linear_path(q, 4, act="none") == "dequant_tiles"
    if "avx512_vnni" in supported:
        with sparseinfer.cpu_isa("avx512_vnni"):
            assert ops.int8_linear_path(q, 128) == "vnni_rows"
    if "amx" in supported:
        with sparseinfer.cpu_isa("amx"):
            assert ops.int8_linear_path(q, 1) == "vnni_rows"
            assert ops.int8_linear_path(q, 128) == "amx_tiles"
            assert ops.int8_linear_path(q32, 128) == "vnni_rows"  # AMX groups need multiples of 64
    assert ops.int8_linear_path(q, 1, act="none") == "dequant_rows"


@pytest.mark.parametrize("cols, group_size", [(65, 32), (100, 64), (129, 32), (1100, 128), (600, None)])
@pytest.mark.parametrize("m", [1, 4, 7])
def test_weight_only_groups_and_chunks(isa, cols, group_size, m):
    """Groups whose last one runs into the 64-column padding (65 columns in groups of 32 pad to
    128: the third group covers 64..127), and several 256-column chunks of the avx2 tiles path."""
    q = _weight(37, cols, torch.float32, group_size)
    x = torch.randn(m, cols)
    exact = reference.int8_linear(x.double(), q, act="none")
    torch_err = relative_error(torch.nn.functional.linear(x, q.to_dense()), exact)
    assert relative_error(ops.int8_linear(x, q, act="none"), exact) <= 2 * torch_err + FLOOR[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_activation_quantization_is_exact(isa, dtype):
    x = torch.randn(9, 203) * torch.logspace(-3, 3, 9).unsqueeze(-1)
    x[2] = 0                                  # all-zero token
    x[3, 7] = 1e4                             # outlier
    x[4] = torch.arange(203) - 101.0          # values that land exactly on .5 after scaling
    x = x.to(dtype)
    stride = 256
    q = torch.full((9, stride), 99, dtype=torch.int8)
    scale = torch.empty(9)
    _C.quantize_rows_int8(DTYPE_CODES[dtype], x.data_ptr(), 9, 203, stride, q.data_ptr(), scale.data_ptr())
    q_ref, s_ref = reference.quantize_per_token(x)
    assert torch.equal(q[:, :203], q_ref) and torch.equal(scale, s_ref)
    assert torch.all(q[:, 203:] == 0) and torch.all(q[2] == 0) and scale[2] == 0


# Tokens with NaN / inf activations (int8_linear.h, "Non-finite activations"). The weight has a
# column (20) of zeros except in row 4, a zero row (9) and a row of positive weights (4).
NONFINITE_KINDS = ["finite", "nan", "all_nan", "pinf", "ninf", "both_infs", "nan_and_inf", "all_inf",
                   "inf_on_zero_column"]


def _poison(x, t, kind):
    nan, inf = float("nan"), float("inf")
    if kind == "nan":
        x[t, 7] = nan
    elif kind == "all_nan":
        x[t] = nan
    elif kind == "pinf":
        x[t, 5] = inf
    elif kind == "ninf":
        x[t, x.shape[1] - 1] = -inf           # in the last, short K block
    elif kind == "both_infs":
        x[t, 3], x[t, 200] = inf, -inf
    elif kind == "nan_and_inf":
        x[t, 10], x[t, 11] = inf, nan
    elif kind == "all_inf":
        x[t] = inf
    elif kind == "inf_on_zero_column":
        x[t, 20] = -inf


def _nonfinite_weight(dtype, group_size):
    w = torch.randn(70, 300)
    w[:, 20] = 0
    w[9] = 0
    w[4] = w[4].abs() + 0.1
    return w, Int8.from_dense(w.to(dtype), group_size)


def _same_specials(a, b):
    return (torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.isposinf(a), torch.isposinf(b))
            and torch.equal(torch.isneginf(a), torch.isneginf(b)))


@pytest.mark.parametrize("group_size", GROUPS, ids=lambda g: f"g{g}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 2, 3, 8, 16, 17, 40])
def test_dynamic_nonfinite_activations(isa, dtype, m, group_size):
    """A token with a NaN or an inf is not quantized: its row is what x @ dequant(W).T gives
    there (NaN, +inf, -inf), equal to the reference on every tier, and other tokens keep their
    bits. m covers every row-kernel token count and the AMX tiles (m >= 8, > 32)."""
    _, q = _nonfinite_weight(dtype, group_size)
    wq = q.to_dense(torch.float32)
    bias = torch.randn(70).to(dtype)
    n = len(NONFINITE_KINDS)
    batches = [[kind] for kind in NONFINITE_KINDS] if m == 1 else \
        [[NONFINITE_KINDS[(t + shift) % n] for t in range(m)] for shift in (0, 4)]
    for kinds in batches:
        x = torch.randn(m, 300)
        for t, kind in enumerate(kinds):
            _poison(x, t, kind)
        x = x.to(dtype)
        for b in (bias, None):
            y = ops.int8_linear(x, q, b)
            ref = reference.int8_linear(x, q, b)
            torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda msg: f"{ops.int8_linear_path(q, m)} {kinds}: {msg}")
            # NaN / inf exactly where F.linear on the dequantized weight (and act="none") has them.
            dense = torch.nn.functional.linear(x.float(), wq, None if b is None else b.float())
            assert _same_specials(y.float(), dense), kinds
            assert _same_specials(ops.int8_linear(x, q, b, act="none").float(), dense), kinds
            for t, kind in enumerate(kinds):
                if kind == "finite":
                    assert torch.isfinite(y[t]).all()
                elif kind in ("nan", "all_nan", "nan_and_inf"):
                    assert torch.isnan(y[t]).all(), kind
                elif kind == "inf_on_zero_column":  # -inf x 0 is NaN; row 4 alone is -inf
                    assert torch.isnan(y[t, :4]).all() and torch.isnan(y[t, 5:]).all()
                    assert y[t, 4] == -float("inf")
                else:
                    assert torch.isnan(y[t, 9]), kind  # inf x zero weight
                    sign = -1 if kind == "ninf" else 1
                    if kind != "both_infs":
                        assert y[t, 4] == sign * float("inf"), kind
                    assert not torch.isfinite(y[t]).any(), kind


def test_nonfinite_rows_keep_the_other_tokens_bits(isa):
    _, q = _nonfinite_weight(torch.float32, None)
    x = torch.randn(17, 300)
    y = ops.int8_linear(x, q)
    x[3, 8] = float("nan")
    x[12, 0] = float("inf")
    y2 = ops.int8_linear(x, q)
    keep = [t for t in range(17) if t not in (3, 12)]
    assert torch.equal(y2[keep], y[keep])
    assert torch.isnan(y2[3]).all() and not torch.isfinite(y2[12]).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_tokens_are_marked_by_quantization(isa, dtype):
    x = torch.randn(len(NONFINITE_KINDS), 203)
    for t, kind in enumerate(NONFINITE_KINDS):
        _poison(x, t, kind)
    x = x.to(dtype)
    m, stride = x.shape[0], 256
    q = torch.full((m, stride), 99, dtype=torch.int8)
    scale = torch.empty(m)
    _C.quantize_rows_int8(DTYPE_CODES[dtype], x.data_ptr(), m, 203, stride, q.data_ptr(), scale.data_ptr())
    q_ref, s_ref = reference.quantize_per_token(x)
    assert torch.equal(q[:, :203], q_ref) and torch.all(q[:, 203:] == 0)
    torch.testing.assert_close(scale, s_ref, rtol=0, atol=0, equal_nan=True)
    bad = torch.tensor([kind != "finite" for kind in NONFINITE_KINDS])
    assert torch.all(q[bad] == 0) and not torch.isfinite(scale[bad]).any() and torch.isfinite(scale[~bad]).all()
    has_nan = torch.isnan(x.float()).any(-1)
    assert torch.equal(torch.isnan(scale), has_nan) and torch.equal(torch.isposinf(scale), bad & ~has_nan)


def test_k_16384_does_not_overflow(isa):
    cols = 16384
    qw = torch.full((3, cols), -128, dtype=torch.int8)
    q = Int8.from_quantized(qw, torch.ones(3))
    x = torch.ones(2, cols)                   # every token quantizes to +127
    y = ops.int8_linear(x, q)
    assert torch.equal(y, reference.int8_linear(x, q))
    expected = 127 * -128 * cols / 127.0      # dot * scale_w * scale_x (scale_x = 1/127)
    torch.testing.assert_close(y, torch.full((2, 3), expected), rtol=1e-6, atol=0)


def test_widest_k_and_limit(isa):
    cols = 65536
    qw = torch.randint(-128, 128, (5, cols), dtype=torch.int8)
    qw[0] = -128
    q = Int8.from_quantized(qw, torch.rand(5) + 0.5)
    x = torch.randn(2, cols)
    x[:, ::2] = x[:, ::2].abs().max()         # half the columns at +127
    assert torch.equal(ops.int8_linear(x, q), reference.int8_linear(x, q))
    with pytest.raises(ValueError, match="65536"):
        Int8.from_dense(torch.randn(2, cols + 1))


def test_outliers_and_zero_rows(isa):
    w = torch.randn(40, 256)
    w[5] = 0
    w[9, 3] = 500.0                            # an outlier weight only coarsens its own row's scale
    q = Int8.from_dense(w)
    bias = torch.randn(40)
    x = torch.randn(20, 256)
    x[4] = 0
    for act in ("dynamic", "none"):
        y = ops.int8_linear(x, q, bias, act=act)
        assert torch.equal(y[:, 5], bias[5].expand(20)) and torch.equal(y[4], bias)
    assert torch.equal(ops.int8_linear(x, q, bias), reference.int8_linear(x, q, bias))
    rows_ok = [r for r in range(40) if r != 9]
    exact = (x @ w.T)[:, rows_ok]
    assert (ops.int8_linear(x, q)[:, rows_ok] - exact).abs().max() < 0.03 * exact.abs().max()


def test_error_bound_against_fp32(isa):
    """The documented W8A8 error model: per weight |w - q s_w| <= s_w / 2 and per activation
    |x - q s_x| <= s_x / 2, so |y - y_fp32| <= s_x/2 sum|w| + s_w/2 sum|x| + K s_x s_w / 4."""
    torch.manual_seed(1)
    w, x = torch.randn(96, 512), torch.randn(33, 512)
    for group_size in (None, 64):
        q = Int8.from_dense(w, group_size)
        y = ops.int8_linear(x, q)
        _, s_x = reference.quantize_per_token(x)
        s_w = q.scale().max(-1).values
        bound = (s_x[:, None] / 2 * w.abs().sum(-1)[None] + s_w[None] / 2 * x.abs().sum(-1)[:, None]
                 + 512 * s_x[:, None] * s_w[None] / 4)
        err = (y.double() - (x.double() @ w.double().T)).abs()
        assert torch.all(err <= bound * (1 + 1e-5) + 1e-5)
        rel = float(err.max() / (x @ w.T).abs().max())
        assert rel < 0.03  # the typical size: about 1% of the largest output here


def test_native_entry_rejects_bad_arguments():
    with pytest.raises(ValueError, match="int8_linear: act code"):
        _C.int8_linear(1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 7, 1)
    with pytest.raises(ValueError, match="int8_linear: null weight pointer"):
        _C.int8_linear(1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1)
    with pytest.raises(ValueError, match="groups must be"):
        _C.int8_linear(1, 0, 0, 0, 0, 1, 64, 0, 0, 0, 3, 32, 1, 1)


def test_bad_act():
    q = _weight(8, 64)
    with pytest.raises(ValueError, match="act must be one of"):
        ops.int8_linear(torch.randn(2, 64), q, act="static")
