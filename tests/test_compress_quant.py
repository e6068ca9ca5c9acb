"""Quantization toolkit: observers, fake quantization (STE), PTQ with calibration, QAT -> Int8Linear."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseinfer import Int8, Int8Linear, reference
from sparseinfer.compress.quant import (MinMaxObserver, MSEObserver, PercentileObserver, QATLinear,
                                        convert_qat, fake_quantize, fake_quantize_per_token, prepare_qat,
                                        quant_range, quantize_ptq)


# ------------------------------------------------------------------ plain-torch oracle
def sim_per_token(x):
    """Per-token int8 quantize-dequantize written out as the kernel contract states it."""
    x = x.float()
    absmax = x.abs().amax(-1, keepdim=True)
    inv = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    return torch.round(x * inv).clamp(-127, 127) * (absmax / 127.0)


def sim_weight(w, group_size):
    """Symmetric min/max int8 weight, per row or per group of columns, dequantized (float64)."""
    w = w.detach().float()
    rows, cols = w.shape
    width = cols if group_size is None else group_size
    deq = torch.empty(rows, cols, dtype=torch.float64)
    for start in range(0, cols, width):
        block = w[:, start:start + width]
        scale = block.abs().amax(1, keepdim=True) / 127.0
        q = torch.round(block / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(-127, 127)
        deq[:, start:start + width] = q.double() * scale.double()
    return deq


def sim_linear(layer, x, act, group_size):
    xq = sim_per_token(x) if act == "dynamic" else x
    return xq.double() @ sim_weight(layer.weight, group_size).T + layer.bias.double()


def mlp(inp=64, hidden=96, out=10):
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# ------------------------------------------------------------------ observers
def test_minmax_symmetric_and_asymmetric_are_exact():
    x = torch.randn(300) * 3 + 0.5
    sym, asym = MinMaxObserver(), MinMaxObserver(symmetric=False)
    for part in x.split(100):  # running min/max across calls
        sym.observe(part)
        asym.observe(part)
    scale, zp = sym.qparams()
    assert scale.shape == () and int(zp) == 0
    assert torch.equal(scale, x.abs().max() / 127)
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale, zp = asym.qparams()
    assert torch.equal(scale, (hi - lo) / 255)
    assert int(zp) == int(torch.round(-lo / scale))
    assert asym.qmin == 0 and asym.qmax == 255 and quant_range(4, True) == (-7, 7)
    # the range's ends and zero survive quantize-dequantize
    ends = fake_quantize(torch.stack([lo, hi, torch.tensor(0.0)]), scale, zp, 0, 255)
    assert torch.allclose(ends, torch.stack([lo, hi, torch.tensor(0.0)]), atol=float(scale) / 2)
    assert float(ends[2]) == 0.0


def test_asymmetric_positive_data_has_nonzero_zero_point_range_including_zero():
    obs = MinMaxObserver(symmetric=False, bits=4)
    obs.observe(torch.tensor([2.0, 5.0, -1.0]))
    scale, zp = obs.qparams()
    assert torch.isclose(scale, torch.tensor(6.0 / 15)) and int(zp) == 2  # round(1 / 0.4) = 2 (half even)


def test_per_channel_shapes_and_values():
    x = torch.randn(4, 6, 5)
    for axis in (1, -2):
        obs = MinMaxObserver(per_channel=True, axis=axis)
        obs.observe(x)
        scale, zp = obs.qparams()
        assert scale.shape == (6,) and zp.shape == (6,) and zp.dtype == torch.int32
        assert torch.equal(scale, x.abs().amax((0, 2)) / 127)
    asym = MSEObserver(per_channel=True, axis=2, symmetric=False, steps=5)
    asym.observe(x)
    assert [t.shape for t in asym.qparams()] == [(5,), (5,)]
    with pytest.raises(ValueError, match="channels along axis"):
        obs.observe(torch.randn(4, 7, 5))


def test_percentile_matches_torch_quantile():
    x = torch.randn(3, 2000)
    sym = PercentileObserver(99.0)
    asym = PercentileObserver(97.5, symmetric=False, per_channel=True, axis=0)
    for part in x.split(500, dim=1):
        sym.observe(part)
        asym.observe(part)
    assert torch.allclose(sym.qparams()[0], torch.quantile(x.abs().flatten(), 0.99) / 127, rtol=1e-6)
    lo, hi = torch.quantile(x, 0.025, dim=1), torch.quantile(x, 0.975, dim=1)
    assert torch.allclose(asym.qparams()[0], (hi - lo) / 255, rtol=1e-6)
    assert torch.equal(asym.qparams()[1], torch.round(-lo / ((hi - lo) / 255)).int())


def test_percentile_sample_stays_bounded_and_representative():
    obs = PercentileObserver(90.0, max_samples=2000)
    data = [torch.randn(1500) for _ in range(20)]
    for part in data:
        obs.observe(part)
    assert obs.sample.numel() == 2000
    exact = torch.quantile(torch.cat(data).abs(), 0.9)  # ~1.645 for N(0, 1)
    assert abs(float(obs.qparams()[0]) * 127 - float(exact)) < 0.1


def test_mse_observer_beats_minmax_on_outliers():
    x = torch.randn(4, 2000)
    x[:, :1] = 20.0  # rare outliers: at 4 bits the min/max step is far too coarse for the rest
    errors = {}
    for name, obs in (("minmax", MinMaxObserver(bits=4, per_channel=True)),
                      ("mse", MSEObserver(bits=4, per_channel=True))):
        obs.observe(x)
        scale, zp = obs.qparams()
        errors[name] = (fake_quantize(x, scale, zp, obs.qmin, obs.qmax, axis=0) - x).pow(2).mean(1)
    assert (errors["mse"] < 0.5 * errors["minmax"]).all()
    plain = torch.randn(5000)  # no outliers: never worse than min/max
    mse, mm = MSEObserver(), MinMaxObserver()
    mse.observe(plain)
    mm.observe(plain)
    err = [(fake_quantize(plain, *o.qparams(), -127, 127) - plain).pow(2).mean() for o in (mse, mm)]
    assert err[0] <= err[1]


def test_reset_forgets():
    obs = PercentileObserver()
    obs.observe(torch.full((10,), 100.0))
    obs.reset()
    with pytest.raises(RuntimeError, match="before any observe"):
        obs.qparams()
    obs.observe(torch.ones(10))
    assert torch.isclose(obs.qparams()[0], torch.tensor(1 / 127))


@pytest.mark.parametrize("make,error,match", [
    (lambda: MinMaxObserver(bits=1), ValueError, "bits must be an integer in 2..16"),
    (lambda: MinMaxObserver(bits=17), ValueError, "bits"),
    (lambda: MinMaxObserver(bits=True), ValueError, "bits"),
    (lambda: MinMaxObserver(symmetric="yes"), TypeError, "symmetric"),
    (lambda: PercentileObserver(percentile=0), ValueError, "percentile"),
    (lambda: PercentileObserver(max_samples=0), ValueError, "max_samples"),
    (lambda: MSEObserver(min_shrink=0), ValueError, "min_shrink"),
    (lambda: MinMaxObserver().qparams(), RuntimeError, "before any observe"),
    (lambda: MinMaxObserver().observe(torch.tensor([1.0, float("nan")])), ValueError, "inf or nan"),
    (lambda: MinMaxObserver().observe(torch.tensor([float("inf")])), ValueError, "inf or nan"),
    (lambda: MinMaxObserver().observe([1.0]), TypeError, "torch.Tensor"),
    (lambda: MinMaxObserver().observe(torch.arange(3)), ValueError, "floating point"),
    (lambda: MinMaxObserver().observe(torch.empty(0)), ValueError, "empty"),
    (lambda: MinMaxObserver(per_channel=True, axis=3).observe(torch.ones(2, 2)), ValueError, "axis 3 out of range"),
])
def test_observer_bad_inputs(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ------------------------------------------------------------------ fake quantization
def test_fake_quantize_values_and_straight_through_gradient():
    x = torch.linspace(-1.5, 1.5, 61, requires_grad=True)
    y = fake_quantize(x, 0.1, 0, -8, 7)
    raw = torch.round(x.detach() / 0.1)
    assert torch.allclose(y, raw.clamp(-8, 7) * 0.1)
    y.sum().backward()
    assert torch.equal(x.grad, ((raw >= -8) & (raw <= 7)).float())
    assert 0 < x.grad.sum() < 61  # both clipped and passing values present
    # per channel with a zero point (unsigned range)
    w = torch.randn(3, 8, requires_grad=True)
    scale, zp = torch.tensor([0.01, 0.02, 0.05]), torch.tensor([128, 100, 3])
    out = fake_quantize(w, scale, zp, 0, 255, axis=0)
    expect = (torch.round(w.detach() / scale[:, None]) + zp[:, None]).clamp(0, 255)
    assert torch.allclose(out, (expect - zp[:, None]) * scale[:, None])


def test_fake_quantize_per_token_is_the_kernel_quantization():
    x = torch.randn(9, 40) * torch.logspace(-3, 2, 9)[:, None]
    x[4] = 0.0
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        q, s = reference.quantize_per_token(xd)
        assert torch.equal(fake_quantize_per_token(xd.float()), q.float() * s[:, None])
    leaf = torch.randn(2, 3, 8, requires_grad=True)  # leading dims are tokens; gradient is identity
    fake_quantize_per_token(leaf).mul(torch.arange(8.0)).sum().backward()
    assert torch.equal(leaf.grad, torch.arange(8.0).expand(2, 3, 8))


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((torch.ones(3), 0.1, 0, 5, 5), {}, ValueError, "qmin < qmax"),
    ((torch.ones(3), -0.1, 0, -8, 7), {}, ValueError, "scale must be finite and >= 0"),
    ((torch.ones(3), torch.ones(4), 0, -8, 7), {}, ValueError, "scale of shape"),
    ((torch.ones(2, 3), torch.ones(3), 0, -8, 7), {"axis": 0}, ValueError, "1-D with 2 entries"),
    ((torch.ones(3), 0.1, 9, -8, 7), {}, ValueError, "zero_point must lie"),
    ((torch.arange(3), 0.1, 0, -8, 7), {}, ValueError, "floating point"),
    ((torch.ones(3), "0.1", 0, -8, 7), {}, TypeError, "scale must be a number"),
])
def test_fake_quantize_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fake_quantize(*args, **kwargs)


# ------------------------------------------------------------------ PTQ
@pytest.mark.parametrize("act", ["dynamic", "none"])
@pytest.mark.parametrize("group_size", [None, 32])
def test_ptq_matches_plain_torch_simulation(act, group_size):
    model = mlp(inp=80)  # 80 columns: the last group of 32 is short
    float_model = copy.deepcopy(model)
    x = torch.randn(64, 80)
    report = quantize_ptq(model, [x[:32], x[32:]], act=act, group_size=group_size)
    assert all(isinstance(model[i], Int8Linear) for i in (0, 2)) and len(report.quantized) == 2
    h = sim_linear(float_model[0], x, act, group_size).float().relu()
    expect = sim_linear(float_model[2], h, act, group_size)
    got = model(x)
    quant_err = (expect - float_model(x).double()).abs().max()
    assert (got.double() - expect).abs().max() < 1e-3 * quant_err  # same quantization, not just close
    if group_size is None:  # min/max per channel is exactly what Int8.from_dense does
        assert torch.equal(model[0].weight.qweight(), Int8.from_dense(float_model[0].weight.detach()).qweight())


@pytest.mark.parametrize("act", ["dynamic", "none"])
def test_report_error_is_the_calibration_output_error(act):
    model = nn.Sequential(nn.Linear(48, 24))
    float_layer = copy.deepcopy(model[0])
    batches = [torch.randn(20, 48) + 0.3, torch.randn(2, 5, 48)]  # any leading dims are tokens
    report = quantize_ptq(model, batches, act=act, weight_observer="percentile")
    x = torch.cat([b.reshape(-1, 48) for b in batches])
    with torch.no_grad():
        direct = rel(model[0](x), F.linear(x.double(), float_layer.weight.double(), float_layer.bias.double()))
    entry = report.layers[0]
    assert entry.quantized and entry.observer == "percentile(99.99)"
    assert entry.rel_error == pytest.approx(direct, rel=1e-3)
    scale = model[0].weight.scale()
    assert (entry.scale_min, entry.scale_max) == (float(scale.min()), float(scale.max()))
    text = str(report)
    assert "percentile(99.99)" in text and "1/1 layers -> Int8Linear" in text


def test_output_mse_is_activation_aware():
    torch.manual_seed(1)
    x = torch.randn(512, 64)
    x[:, :8] *= 0.01  # eight quiet input channels ...
    x[:, 8:16] *= 10.0  # ... and eight loud ones
    weight = torch.randn(32, 64) * 0.05
    weight[torch.arange(16), torch.arange(16) % 8] = 1.5  # outliers on quiet inputs: worth clipping
    weight[torch.arange(16, 32), 8 + torch.arange(16) % 8] = 1.5  # outliers on loud inputs: keep them
    results = {}
    for observer in ("minmax", "output_mse"):
        model = nn.Sequential(nn.Linear(64, 32))
        with torch.no_grad():
            model[0].weight.copy_(weight)
            expect = x.double() @ weight.double().T + model[0].bias.double()
            report = quantize_ptq(model, [x], weight_observer=observer)
            y = model(x)
        assert report.layers[0].rel_error == pytest.approx(rel(y, expect), rel=1e-3)
        results[observer] = (model[0].weight.scale()[:, 0], rel(y[:, :16], expect[:, :16]), report.layers[0].rel_error)
    (mm_scale, mm_quiet, mm_err), (out_scale, out_quiet, out_err) = results["minmax"], results["output_mse"]
    assert (out_scale[:16] < 0.8 * mm_scale[:16]).all()  # clipped where the input is quiet
    assert torch.equal(out_scale[16:], mm_scale[16:])  # the same outliers kept where it is loud
    assert out_quiet < 0.6 * mm_quiet and out_err < mm_err


def _digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (x[:1300], y[:1300]), (x[1300:], y[1300:])


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def test_trained_digits_mlp_keeps_accuracy_after_ptq():
    (xtr, ytr), (xte, yte) = _digits()
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    before = _accuracy(model, xte, yte)
    assert before > 90
    calibration = torch.utils.data.DataLoader(xtr, batch_size=256)
    report = quantize_ptq(model, calibration, act="dynamic", weight_observer="output_mse")
    assert report.batches == 6 and all(l.rel_error < 0.05 for l in report.quantized)
    assert abs(_accuracy(model, xte, yte) - before) <= 0.5


def test_conv_left_float_and_reported_and_batch_forms():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 10)
            self.unused = nn.Linear(10, 10)
            self.attn = nn.MultiheadAttention(8, 2)

        def forward(self, image, scale=1.0):
            return self.fc(self.conv(image).relu().flatten(1)) * scale

    batches = [torch.randn(5, 1, 8, 8) for _ in range(2)]
    for calibration, forward in ((batches, None), ([(b, 2.0) for b in batches], None),
                                 ([{"image": b} for b in batches], None),
                                 (({"x": b} for b in batches), lambda m, batch: m(batch["x"])),
                                 (batches[0], None)):
        model = Net()
        report = quantize_ptq(model, calibration, forward=forward, progress=forward is not None)
        reasons = {l.name: l.reason for l in report.skipped}
        assert isinstance(model.conv, nn.Conv2d) and "Conv2d left in float" in reasons["conv"]
        assert isinstance(model.fc, Int8Linear) and [l.name for l in report.quantized] == ["fc"]
        assert isinstance(model.unused, nn.Linear) and reasons["unused"] == "never called during calibration"
        assert "subclass" in reasons["attn.out_proj"]
        assert "skipped: Conv2d left in float" in str(report)


def test_ptq_filter_bf16_and_hf_conv1d():
    from transformers.pytorch_utils import Conv1D
    model = nn.Sequential(nn.Linear(32, 64).bfloat16(), nn.ReLU(), nn.Linear(64, 16).bfloat16())
    report = quantize_ptq(model, [torch.randn(8, 32).bfloat16()], act="none",
                          filter=lambda name, module: name != "2")
    assert isinstance(model[0], Int8Linear) and isinstance(model[2], nn.Linear)
    assert report.skipped[0].reason == "excluded by filter"
    scale = model[0].weight.scale()
    assert torch.equal(scale.bfloat16().float(), scale)  # bf16 checkpoints store scales losslessly
    conv = Conv1D(24, 40)  # y = x @ W + b with W [in=40, out=24]
    holder, x = nn.Sequential(conv), torch.randn(6, 40)
    expect = conv(x).detach()
    quantize_ptq(holder, [x], act="none")
    assert isinstance(holder[0], Int8Linear) and rel(holder[0](x), expect) < 0.01


def test_weight_observer_instances_per_tensor_and_groups():
    model = nn.Sequential(nn.Linear(80, 8))
    w = model[0].weight.detach().clone()
    quantize_ptq(model, [torch.randn(4, 80)], weight_observer=MinMaxObserver(bits=4), act="none")
    assert torch.equal(model[0].weight.scale(), (w.abs().max() / 7).expand(8, 1))  # one scale, 4-bit range
    assert model[0].weight.qweight().abs().max() == 7
    model = nn.Sequential(nn.Linear(80, 8))
    w = model[0].weight.detach().clone()
    quantize_ptq(model, [torch.randn(4, 80)], weight_observer=PercentileObserver(90.0, per_channel=True),
                 group_size=32)
    expect = torch.stack([torch.quantile(w[:, g:g + 32].abs(), 0.9, dim=1) / 127 for g in (0, 32, 64)], 1)
    assert torch.allclose(model[0].weight.scale(), expect, rtol=1e-6)  # last group: 16 columns


def _same_model(a, b):
    return [type(m) for m in a.modules()] == [type(m) for m in b.modules()] and all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _raise(model, batch):
    model(batch)
    raise RuntimeError("batch exploded")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"act": "static"}, ValueError, "act must be one of"),
    ({"weight_observer": "max"}, ValueError, "weight_observer must be one of .*output_mse"),
    ({"weight_observer": MinMaxObserver(symmetric=False)}, ValueError, "asymmetric observers are not supported"),
    ({"weight_observer": MinMaxObserver(bits=12)}, ValueError, "bits <= 8"),
    ({"weight_observer": MinMaxObserver(per_channel=True, axis=1)}, ValueError, "axis=0"),
    ({"weight_observer": 3}, TypeError, "weight_observer must be a name"),
    ({"group_size": 48}, ValueError, "group_size must be None"),
    ({"filter": "fc"}, TypeError, "filter must be callable"),
    ({"forward": 1}, TypeError, "forward must be callable"),
    ({"progress": 1}, TypeError, "progress must be a bool"),
    ({"calibration": None}, TypeError, "calibration must be an iterable"),
    ({"calibration": []}, ValueError, "calibration yielded no batches"),
    ({"forward": _raise}, RuntimeError, "batch exploded"),
])
def test_ptq_bad_inputs_leave_model_unchanged(kwargs, error, match):
    model = mlp()
    model.train()
    before = copy.deepcopy(model)
    args = {"calibration": [torch.randn(4, 64)], **kwargs}
    with pytest.raises(error, match=match):
        quantize_ptq(model, args.pop("calibration"), **args)
    assert _same_model(model, before) and model.training and model[0].training


def test_ptq_refuses_bad_models():
    with pytest.raises(ValueError, match="itself a Linear"):
        quantize_ptq(nn.Linear(4, 4), [torch.randn(2, 4)])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        quantize_ptq("model", [torch.randn(2, 4)])
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '2': weight holds inf or nan"):
        quantize_ptq(model, [torch.randn(2, 64)])
    assert isinstance(model[0], nn.Linear)


# ------------------------------------------------------------------ QAT
@pytest.mark.parametrize("act", ["dynamic", "none"])
@pytest.mark.parametrize("group_size,dtype", [(None, torch.float32), (64, torch.float32), (None, torch.bfloat16)])
def test_qat_linear_converts_to_identical_int8_linear(act, group_size, dtype):
    linear = nn.Linear(160, 48).to(dtype)
    qat = QATLinear.from_linear(linear, act=act, group_size=group_size)
    x = torch.randn(3, 7, 160).to(dtype)
    converted = qat.to_int8()
    with torch.no_grad():
        y_qat, y_int8, y_float = qat(x), converted(x), linear(x)
    assert y_qat.dtype == dtype and converted.group_size == group_size
    diff = (y_int8.double() - y_qat.double()).abs()
    if dtype == torch.float32:  # equal up to fp32 summation order, far below the int8 error
        assert diff.max() <= 1e-3 * (y_float.double() - y_qat.double()).abs().max()
    else:  # the same fp32 value rounded once to bf16: at most one bf16 ulp apart
        assert (diff <= 2.0 ** -7 * y_qat.double().abs()).all()


def test_qat_gradient_is_straight_through():
    linear = nn.Linear(40, 6)
    qat = QATLinear.from_linear(linear, act="dynamic")
    x = torch.randn(10, 40)
    grad_out = torch.randn(10, 6)
    qat(x).backward(grad_out)
    assert torch.allclose(qat.weight.grad, grad_out.T @ sim_per_token(x), atol=1e-5)  # nothing clipped
    assert torch.allclose(qat.bias.grad, grad_out.sum(0))
    clipping = QATLinear.from_linear(linear, weight_observer=PercentileObserver(50.0, per_channel=True))
    clipping(x).backward(grad_out)
    limit = (clipping.weight_scale() * 127).expand(6, 40)
    beyond = linear.weight.detach().abs() > limit * 1.01
    assert beyond.any() and (clipping.weight.grad[beyond] == 0).all()


def test_qat_training_reduces_loss_and_convert_matches():
    (xtr, ytr), (xte, yte) = _digits()
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):  # a rough float start
        opt.zero_grad()
        F.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    names = prepare_qat(model, act="dynamic")
    assert names == ["0", "2"] and isinstance(model[0], QATLinear)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(xtr), ytr)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    with torch.no_grad():
        y_qat = model(xte)
    assert convert_qat(model) == ["0", "2"] and isinstance(model[2], Int8Linear)
    with torch.no_grad():
        y_int8 = model(xte)
    assert torch.equal(y_int8.argmax(1), y_qat.argmax(1))
    assert rel(y_int8, y_qat) < 1e-4  # float-vs-int8 is ~1e-2


def test_prepare_qat_options_and_bad_inputs():
    model = mlp()
    assert prepare_qat(model, weight_observer="mse", group_size=32, filter=lambda n, m: n == "2") == ["2"]
    assert isinstance(model[0], nn.Linear) and "group_size=32" in repr(model[2])
    for bad, error, match in (({"weight_observer": "output_mse"}, ValueError, "needs calibration data"),
                              ({"weight_observer": MSEObserver(symmetric=False)}, ValueError, "asymmetric"),
                              ({"act": "int4"}, ValueError, "act must be one of"),
                              ({"group_size": 16}, ValueError, "group_size"),
                              ({"filter": 0}, TypeError, "filter must be callable")):
        fresh = mlp()
        with pytest.raises(error, match=match):
            prepare_qat(fresh, **bad)
        assert isinstance(fresh[0], nn.Linear) and isinstance(fresh[2], nn.Linear)
    with pytest.raises(ValueError, match="itself a Linear"):
        prepare_qat(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no QATLinear layers"):
        convert_qat(mlp())
    with pytest.raises(ValueError, match="itself a QATLinear"):
        convert_qat(QATLinear(3, 3))
    double = mlp()
    prepare_qat(double)
    double[2].double()
    with pytest.raises(ValueError, match="layer '2': .*float64 has no Int8Linear kernel"):
        convert_qat(double)
    assert isinstance(double[0], QATLinear)  # nothing converted
