"""Fused fp32 RMSNorm and rotary embedding for the Llama decode loop (sparseinfer.generate):
one native pass each instead of torch's several ops (at batch 1 a decode step runs ~70 such
small ops, each costing more in dispatch than in arithmetic). Anything but contiguous fp32 CPU
tensors of the expected shapes takes the plain-torch path, which is also the reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._native import _C
from .checks import ptr


def _native_ok(*tensors: torch.Tensor) -> bool:
    """Contiguous fp32 CPU tensors that autograd does not track."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
               and not (t.requires_grad and torch.is_grad_enabled()) for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """F.rms_norm(x, (d,), weight, eps) over the last dim d (the mean of squares summed in
    float64 natively: equal to torch's up to fp32 rounding)."""
    d = x.shape[-1]
    if not (_native_ok(x, weight) and weight.shape == (d,)) or torch.compiler.is_compiling():
        return F.rms_norm(x, (d,), weight, eps)
    y = torch.empty_like(x)
    _C.rms_norm_f32(ptr(x), ptr(weight), ptr(y), x.numel() // max(d, 1), d, float(eps))
    return y


def rotate_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1) (Hugging Face Llama)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [1, tokens, heads, dim] with cos / sin [tokens, dim]; the same bits
    as rotate_reference(x, cos[:, None], sin[:, None]). Other shapes take the torch path."""
    if x.dim() == 4 and x.shape[0] == 1 and cos.dim() == 2 and tuple(cos.shape) == (x.shape[1], x.shape[3]) \
            and cos.shape == sin.shape and x.shape[3] % 2 == 0 and _native_ok(x, cos, sin) \
            and not torch.compiler.is_compiling():
        y = torch.empty_like(x)
        _C.rope_f32(ptr(x), ptr(cos), ptr(sin), ptr(y), x.shape[1], x.shape[2], x.shape[3])
        return y
    return rotate_reference(x, cos[:, None] if cos.dim() == 2 else cos, sin[:, None] if sin.dim() == 2 else sin)
