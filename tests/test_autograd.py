"""Gradients through our layers (issue #23: items 5, 6 and 11), for every registered format
from the one table of op cases (op_cases.py).

The weights are frozen: dX = dY @ W (int8: W dequantized; act="dynamic" is straight-through),
dBias = dY summed over tokens when the bias is made trainable. Eager calls without a gradient
skip the dispatcher; with one they go through the custom op and its registered backward, which
torch.compile and torch.jit.trace also record. torch.jit.script is refused with a clear message.
"""
import pytest
import torch
from torch import nn

from sparseinfer._native import cuda_built
from op_cases import case_params, pack_variant_params, variant_params
from tolerances import FLOOR, relative_error

ROWS, COLS = 20, 150  # COLS crosses a CSR panel (128) and a 2:4 chunk, and is not a multiple of 4


def _dense64(case, weight) -> torch.Tensor:
    """The weight the gradient is defined with, in float64 (int8: dequantized)."""
    return weight.to_dense(torch.float64) if case.name == "int8" else weight.to_dense().double()


def _layer(case, variant, dtype=torch.float32, rows=ROWS, cols=COLS, pack=None):
    pack = case.pack_options(variant) if pack is None else pack
    _, weight = case.example(rows, cols, dtype=dtype, **pack)
    return case.spec.layer_cls.from_weight(weight, torch.randn(rows), **case.op_options(variant)), weight


def _assert_grad_close(grad, dy, w64, dtype):
    exact = dy.double() @ w64
    torch_err = relative_error((dy @ w64.to(dtype)), exact)
    ours = relative_error(grad, exact)
    assert grad.dtype == dtype and grad.shape == exact.shape
    assert ours <= 2 * torch_err + FLOOR[dtype], f"grad error {ours:.3g} (torch {torch_err:.3g})"


def _sparseinfer_ops_called(fn) -> list:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("sparseinfer::")]


# ---------------------------------------------------------------- eager autograd
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case,pack,variant", pack_variant_params())
def test_grad_of_x_and_bias_match_dense(case, pack, variant, dtype):
    layer, weight = _layer(case, variant, dtype, pack=pack)
    layer.bias.requires_grad_(True)
    w64 = _dense64(case, weight)
    for lead in ((), (1,), (2, 3), (0,)):
        layer.bias.grad = None
        x = torch.randn(*lead, COLS).to(dtype).requires_grad_(True)
        y = layer(x)
        assert y.requires_grad and y.shape == (*lead, ROWS)
        with torch.no_grad():
            assert torch.equal(y.detach(), layer(x))  # the same kernel as the no-grad path
        dy = torch.randn_like(y)
        y.backward(dy)
        _assert_grad_close(x.grad.reshape(-1, COLS), dy.reshape(-1, ROWS), w64, dtype)
        torch.testing.assert_close(layer.bias.grad.double(), dy.reshape(-1, ROWS).double().sum(0),
                                   rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2)


@pytest.mark.parametrize("case,variant", variant_params())
def test_bias_only_grad(case, variant):
    layer, _ = _layer(case, variant)
    layer.bias.requires_grad_(True)
    x = torch.randn(4, COLS)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.bias.grad, torch.full((ROWS,), 4.0))


@pytest.mark.parametrize("case,variant", variant_params())
def test_gradient_reaches_earlier_layers(case, variant):
    """Fine-tuning on a frozen compressed base: the trainable layer before ours gets the same
    gradient as with the equivalent dense Linear (a LoRA / distillation setup)."""
    layer, weight = _layer(case, variant)
    torch.manual_seed(1)
    first = nn.Linear(COLS, COLS)
    dense = nn.Linear(COLS, ROWS)
    with torch.no_grad():
        dense.weight.copy_(_dense64(case, weight).float())
        dense.bias.copy_(layer.bias)
    x, dy = torch.randn(5, COLS), torch.randn(5, ROWS)
    nn.Sequential(first, layer)(x).backward(dy)  # a fixed dY: W8A8's forward error stays out
    ours = first.weight.grad.clone()
    first.weight.grad = None
    nn.Sequential(first, dense)(x).backward(dy)
    torch.testing.assert_close(ours, first.weight.grad)


@pytest.mark.parametrize("case,variant", variant_params())
def test_no_grad_needed_skips_the_dispatcher(case, variant):
    layer, _ = _layer(case, variant)
    x = torch.randn(2, COLS)
    assert not layer(x).requires_grad
    assert _sparseinfer_ops_called(lambda: layer(x)) == []
    x.requires_grad_(True)
    with torch.no_grad():
        assert not layer(x).requires_grad
        assert _sparseinfer_ops_called(lambda: layer(x)) == []
    assert _sparseinfer_ops_called(lambda: layer(x))  # grad needed: through the custom op


# ---------------------------------------------------------------- torch.library integration
@pytest.mark.parametrize("case,pack,variant", pack_variant_params())
def test_opcheck_with_grad(case, pack, variant):
    _, weight = case.example(ROWS, COLS, **pack)
    for m, x_grad, bias_grad in ((1, True, False), (3, True, True), (9, False, True)):
        bias = torch.randn(ROWS, requires_grad=bias_grad)
        x = torch.randn(m, COLS, requires_grad=x_grad)
        args = case.raw_args(weight, x, bias, **case.op_options(variant))
        torch.library.opcheck(case.raw_op.default, tuple(args.values()))


@pytest.mark.parametrize("case", case_params())
def test_dense_op(case):
    for pack in case.packs:
        _, weight = case.example(ROWS, COLS, **pack)
        args = case.dense_args(weight)
        torch.library.opcheck(case.dense_op.default, args)
        expected = weight.to_dense(torch.float32) if case.name == "int8" else weight.to_dense()
        assert torch.equal(case.dense_op(*args), expected)


@pytest.mark.parametrize("case,variant", variant_params())
def test_torch_compile_fullgraph_backward(case, variant):
    layer, _ = _layer(case, variant)
    layer.bias.requires_grad_(True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 5, COLS, requires_grad=True)
    y = compiled(x)
    y.backward(torch.ones_like(y))
    grad_x, grad_b = x.grad, layer.bias.grad
    x.grad, layer.bias.grad = None, None
    expected = layer(x)
    expected.backward(torch.ones_like(expected))
    assert torch.equal(y, expected)
    torch.testing.assert_close(grad_x, x.grad)
    torch.testing.assert_close(grad_b, layer.bias.grad)


# ---------------------------------------------------------------- TorchScript
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("case,variant", variant_params())
def test_jit_trace_records_the_op(case, variant):
    layer, _ = _layer(case, variant)
    traced = torch.jit.trace(layer, torch.randn(3, 4, COLS))
    assert f"sparseinfer::{case.raw_op.__name__.split('.')[0]}" in str(traced.inlined_graph)
    x = torch.randn(3, 4, COLS)
    assert torch.equal(traced(x), layer(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("case", case_params())
def test_jit_script_is_refused_clearly(case):
    layer, _ = _layer(case, {})
    for module in (layer, nn.Sequential(nn.Linear(COLS, COLS), layer)):
        with pytest.raises(RuntimeError, match=r"cannot be compiled with torch\.jit\.script.*"
                                               r"torch\.compile.*torch\.export.*torch\.jit\.trace"):
            torch.jit.script(module)


# ---------------------------------------------------------------- CUDA
@pytest.mark.skipif(not (cuda_built() and torch.cuda.is_available()),
                    reason="needs the CUDA build and a CUDA device (run on a lent GPU)")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["csr", "2:4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_cuda_grad_trace_compile(name, dtype):
    from op_cases import CASES
    case = CASES[name]
    layer, weight = _layer(case, {}, dtype)
    layer = layer.cuda()
    layer.bias.requires_grad_(True)
    w64 = _dense64(case, weight).cuda()
    for m in (1, 3, 100):  # the sparse kernels and the dense_expand path
        x = torch.randn(m, COLS, device="cuda", dtype=dtype, requires_grad=True)
        y = layer(x)
        dy = torch.randn_like(y)
        y.backward(dy)
        _assert_grad_close(x.grad, dy, w64, dtype)
        traced = torch.jit.trace(layer, x.detach())
        x2 = torch.randn_like(x).detach()
        assert torch.equal(traced(x2), layer(x2))
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        x.grad = None
        compiled(x).backward(dy)
        _assert_grad_close(x.grad, dy, w64, dtype)
