"""Fake quantization (quantize then dequantize, staying in float) with the straight-through
estimator (STE; Bengio et al. 2013, "Estimating or Propagating Gradients Through Stochastic
Neurons"; used for QAT as in Jacob et al. 2018, "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference"): the gradient passes unchanged where a value
falls inside the quantization range and is zero where it was clipped.

``fake_quantize_per_token`` mirrors, bit for bit, the dynamic per-token activation quantization
that ``sparseinfer.ops.int8_linear(act="dynamic")`` runs inside its kernels (see
``sparseinfer.reference.quantize_per_token``).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

# Activations in the int8 kernels: symmetric, narrow range (no -128), per token.
ACT_QMAX = 127


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range for `bits`-bit quantization: symmetric uses the signed narrow range
    [-(2^(b-1) - 1), 2^(b-1) - 1] (zero point 0, as sparseinfer's Int8 weights); asymmetric uses
    the unsigned range [0, 2^b - 1] with a zero point."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 2..16, got {bits!r}")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _FakeQuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        compute = _compute_dtype(x)
        xf, s, zp = x.to(compute), scale.to(compute), zero_point.to(compute)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.round(xf / safe) + zp
        # A zero scale only comes from all-zero data: it dequantizes to 0 and clips nothing.
        inside = ((q >= qmin) & (q <= qmax)) | (s == 0)
        ctx.save_for_backward(inside)
        return ((q.clamp(qmin, qmax) - zp) * s).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def _as_param(name: str, value, like: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    """scale / zero_point as a tensor that broadcasts against `like` (1-D along `axis`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(value, dtype=torch.float64)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number or a torch.Tensor, got {type(value).__name__}")
    value = value.detach().to(like.device)
    if axis is not None:
        if not -like.dim() <= axis < like.dim():
            raise ValueError(f"axis {axis} out of range for x with {like.dim()} dims")
        if value.dim() != 1 or value.shape[0] != like.shape[axis]:
            raise ValueError(f"{name} must be 1-D with {like.shape[axis]} entries (x.shape[{axis}]) "
                             f"when axis is given, got shape {tuple(value.shape)}")
        shape = [1] * like.dim()
        shape[axis] = -1
        value = value.reshape(shape)
    try:
        broadcast = torch.broadcast_shapes(like.shape, value.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != like.shape:
        raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to x of shape "
                         f"{tuple(like.shape)}")
    return value


def fake_quantize(x: torch.Tensor, scale: Union[torch.Tensor, float],
                  zero_point: Union[torch.Tensor, int], qmin: int, qmax: int, *,
                  axis: Optional[int] = None) -> torch.Tensor:
    """Quantize-dequantize ``x``: ``(clamp(round(x / scale) + zero_point, qmin, qmax) -
    zero_point) * scale``, round half to even, with an STE gradient for ``x`` (1 where not
    clipped, 0 where clipped; scale and zero point get no gradient). A zero scale maps to 0.

    Args:
        x: float tensor.
        scale, zero_point: numbers or tensors broadcastable to ``x`` (or 1-D along ``axis``),
            e.g. from an observer's ``qparams()``; scale finite and >= 0.
        qmin, qmax: the integer range (see :func:`quant_range`), qmin < qmax.
        axis: the dimension of ``x`` that 1-D per-channel parameters run along.
    Returns:
        A tensor like ``x`` holding only representable values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if qmin >= qmax:
        raise ValueError(f"need qmin < qmax, got qmin={qmin}, qmax={qmax}")
    scale = _as_param("scale", scale, x, axis)
    zero_point = _as_param("zero_point", zero_point, x, axis)
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError("scale must be finite and >= 0")
    if zero_point.is_floating_point() and not bool((zero_point == torch.round(zero_point)).all()):
        raise ValueError("zero_point must hold integers")
    if bool(((zero_point < qmin) | (zero_point > qmax)).any()):
        raise ValueError(f"zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    return _FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax)


class _PerTokenSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        xf = x.float()
        absmax = xf.abs().amax(-1, keepdim=True) if xf.shape[-1] else xf.new_zeros(*xf.shape[:-1], 1)
        # The kernels' exact arithmetic: multiply by 127 / absmax in fp32, round half to even.
        inv = torch.where(absmax > 0, torch.full_like(absmax, float(ACT_QMAX)) / absmax,
                          torch.zeros_like(absmax))
        q = torch.round(xf * inv).clamp(-ACT_QMAX, ACT_QMAX)
        return (q * (absmax / float(ACT_QMAX))).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad  # the token's absmax maps to +-127: nothing is ever clipped


def fake_quantize_per_token(x: torch.Tensor) -> torch.Tensor:
    """Dynamic symmetric per-token int8 fake quantization of activations, exactly as
    ``ops.int8_linear(act="dynamic")`` quantizes its input: per row of the last dim,
    ``s = max|x| / 127``, ``q = clamp(round(x * (127 / max|x|)), -127, 127)`` in fp32, round half to
    even; a zero row stays zero. Returns ``q * s`` in x's dtype (pass ``x.float()`` to keep the
    fp32 values the kernel multiplies with). Gradient: straight through (identity).

    Args:
        x: float tensor [..., k] (tokens along the leading dims).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"x must be a floating point tensor with at least 1 dim, got {x.dtype} "
                         f"of shape {tuple(x.shape)}")
    return _PerTokenSTE.apply(x)
