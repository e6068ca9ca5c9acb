"""The Int8 format: quantization, canonical round trips, validation of untrusted data, and the
Int8Linear layer / sparsify(format="int8")."""
import pytest
import torch

import sparseinfer
from sparseinfer import Int8, Int8Linear, ops
from sparseinfer.formats import FormatError


@pytest.mark.parametrize("group_size", [None, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_quantization_error_and_round_trip(dtype, group_size):
    w = torch.randn(37, 300).to(dtype)
    q = Int8.from_dense(w, group_size)
    assert q.shape == (37, 300) and q.dtype == dtype and q.group_size == group_size
    scale = q.scale()
    groups = 1 if group_size is None else -(-300 // group_size)
    assert scale.shape == (37, groups) and scale.dtype == torch.float32
    assert torch.equal(scale.to(dtype).float(), scale)  # representable in the model dtype
    qw = q.qweight()
    assert qw.dtype == torch.int8 and qw.abs().max() <= 127
    width = 300 if group_size is None else group_size
    per_col = scale.repeat_interleave(width, dim=1)[:, :300]
    err = (q.to_dense(torch.float32) - w.float()).abs()
    assert torch.all(err <= per_col / 2 * 1.02 + 1e-6)   # half a step (+ the scale's own rounding)
    again = Int8.from_quantized(qw, scale.to(dtype), group_size)
    assert torch.equal(again.qweight(), qw) and torch.equal(again.scale(), scale)
    assert again.dtype == dtype
    q.validate()
    again.validate()


def test_zero_groups_and_nbytes():
    w = torch.zeros(20, 128)
    w[3, 64:] = 1.0
    q = Int8.from_dense(w, 64)
    assert q.scale()[0].tolist() == [0.0, 0.0] and q.scale()[3, 0] == 0 and q.scale()[3, 1] > 0
    assert torch.equal(q.to_dense(), w)
    assert q.nnz == 64 and q.bits == 8
    assert q.dense_nbytes() == 20 * 128 * 4
    assert q.nbytes() == 32 * 128 + 2 * 32 * 2 * 4  # padded rows: int8 + wsum + scales


def test_to_changes_activation_dtype_only():
    q = Int8.from_dense(torch.randn(16, 64))
    h = q.to(torch.float16)
    assert h.dtype == torch.float16 and h.packed is q.packed
    assert q.to(torch.float32) is q
    y = ops.int8_linear(torch.randn(2, 64).half(), h)
    assert y.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        q.to(torch.int32)
    with pytest.raises((ValueError, RuntimeError)):
        q.to("cuda")


def test_group_size_checks():
    for bad in (0, 16, 48, 100, -32, 64.0, True):
        with pytest.raises(ValueError, match="group_size must be"):
            Int8.from_dense(torch.randn(4, 64), bad)


def test_from_quantized_rejects_bad_data():
    qw = torch.randint(-128, 128, (6, 70), dtype=torch.int8)
    ok = torch.rand(6) + 0.1
    cases = [
        (qw.to(torch.int16), ok, None, "qweight: must be a 2-D int8"),
        (qw.reshape(-1), ok, None, "qweight: must be a 2-D int8"),
        (qw, ok[:5], None, "scale: shape must be"),
        (qw, torch.rand(6, 2), None, "scale: shape must be"),
        (qw, torch.rand(6, 2), 32, "scale: shape must be"),   # 70 columns / 32 = 3 groups
        (qw, ok.to(torch.int32), None, "scale: dtype"),
        (qw, torch.tensor([1.0, float("nan"), 1, 1, 1, 1]), None, "row 1, group 0 is nan"),
        (qw, torch.tensor([1.0, 1, 1, float("inf"), 1, 1]), None, "finite"),
        (qw, torch.tensor([1.0, 1, -1, 1, 1, 1]), None, ">= 0"),
        (qw, ok, 40, "group_size"),
        ("nope", ok, None, "qweight: must be a torch.Tensor"),
    ]
    for qweight, scale, group_size, message in cases:
        with pytest.raises(FormatError, match=message):
            Int8.from_quantized(qweight, scale, group_size)
    q = Int8.from_quantized(qw, ok.unsqueeze(-1))
    assert torch.equal(q.qweight(), qw)


def test_validate_catches_corruption():
    q = Int8.from_dense(torch.randn(20, 100), 32)
    q.packed.wsum[0, 0, 0] += 1
    with pytest.raises(FormatError, match="row sums"):
        q.validate()
    q = Int8.from_dense(torch.randn(20, 100))
    q.packed.qweight.view(-1)[-1] = 5  # a padding row
    with pytest.raises(FormatError, match="padding"):
        q.validate()
    q = Int8.from_dense(torch.randn(20, 100))
    q.packed.scales[0, 0, 0] = float("nan")
    with pytest.raises(FormatError, match="finite"):
        q.validate()


# ---------------------------------------------------------------------------------- nn
@pytest.mark.parametrize("act", ["dynamic", "none"])
@pytest.mark.parametrize("group_size", [None, 64])
def test_int8_linear_layer(act, group_size):
    linear = torch.nn.Linear(200, 48)
    layer = Int8Linear.from_linear(linear, act=act, group_size=group_size)
    x = torch.randn(5, 7, 200)
    y = layer(x)
    assert y.shape == (5, 7, 48)
    assert torch.equal(y, ops.int8_linear(x, layer.weight, layer.bias, act))
    torch.testing.assert_close(y, linear(x).detach(), rtol=0.05, atol=0.05)
    assert f"act={act}" in repr(layer)


def test_state_dict_is_canonical_and_round_trips():
    src = torch.nn.Sequential(torch.nn.Linear(96, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8).to(torch.bfloat16))
    src[2].weight.data = src[2].weight.data.bfloat16()
    dst = torch.nn.Sequential(Int8Linear(96, 32, group_size=32), torch.nn.ReLU(),
                              Int8Linear(32, 8, dtype=torch.bfloat16))
    src[0] = Int8Linear.from_linear(src[0], group_size=32)
    src[2] = Int8Linear.from_linear(src[2])
    sd = src.state_dict()
    assert sd["0.weight"].dtype == torch.int8 and tuple(sd["0.weight_scale"].shape) == (32, 3)
    assert sd["2.weight_scale"].dtype == torch.bfloat16 and tuple(sd["2.weight_scale"].shape) == (8, 1)
    assert dst.load_state_dict(sd) is not None
    x = torch.randn(3, 96)
    h = src[1](src[0](x))
    assert torch.equal(dst[0](x), src[0](x))
    assert torch.equal(dst[2](h.bfloat16()), src[2](h.bfloat16()))


def test_state_dict_infers_group_size_and_rejects_bad():
    layer = Int8Linear.from_dense(torch.randn(8, 128), group_size=64)
    fresh = Int8Linear(128, 8, bias=False)  # per channel: the group size comes from the scale's shape
    fresh.load_state_dict(layer.state_dict())
    assert fresh.group_size == 64
    bad = layer.state_dict()
    bad["weight_scale"] = torch.rand(8, 5)
    with pytest.raises(RuntimeError, match="weight"):
        Int8Linear(128, 8, bias=False).load_state_dict(bad)
    bad = layer.state_dict()
    bad["weight_scale"][0, 0] = -1.0
    with pytest.raises(RuntimeError, match=">= 0"):
        Int8Linear(128, 8, bias=False).load_state_dict(bad)


def test_half_and_device_moves():
    layer = Int8Linear.from_dense(torch.randn(16, 64), torch.randn(16))
    layer.half()
    assert layer.weight.dtype == torch.float16 and layer.bias.dtype == torch.float16
    assert layer(torch.randn(2, 64).half()).dtype == torch.float16


def test_sparsify_int8():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 10))
    x = torch.randn(6, 64)
    expected = model(x).detach()
    report = sparseinfer.sparsify(model, format="int8", act="none")
    assert len(report.converted) == 2 and all(isinstance(model[i], Int8Linear) for i in (0, 2))
    assert report.sparse_bytes < report.dense_bytes / 3
    torch.testing.assert_close(model(x), expected, rtol=0.02, atol=0.02)
    with pytest.raises(ValueError, match="unknown option"):
        sparseinfer.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4)), format="int8", bits=4)
    with pytest.raises(ValueError, match="unknown option"):
        sparseinfer.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4)), format="csr", act="none")
    with pytest.raises(ValueError, match="act must be"):
        sparseinfer.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4)), format="int8", act="static")
    with pytest.raises(ValueError, match="group_size"):
        sparseinfer.sparsify(torch.nn.Sequential(torch.nn.Linear(4, 4)), format="int8", group_size=10)
