"""Plain-torch reference of every op: the test oracle. Slow and obviously correct."""
from __future__ import annotations

from typing import Optional

import torch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """y = x @ weight.T + bias computed in `compute_dtype`, returned in x's dtype."""
    y = x.to(compute_dtype) @ weight.to(compute_dtype).T
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y.to(x.dtype)


def csr_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
               compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Reference for ops.csr_linear: densify the CSR weight and run a plain matmul."""
    return linear(x, weight.to_dense(), bias, compute_dtype)


def sparse24_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
                    compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Reference for ops.sparse24_linear: densify the 2:4 weight and run a plain matmul."""
    return linear(x, weight.to_dense(), bias, compute_dtype)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token int8 quantization of x [m, k] (as ops.int8_linear does it):
    scale = max|x| / 127, q = clamp(round(x * (127 / max|x|)), -127, 127) in fp32, round half to
    even; a zero row gets q = 0 and scale 0. Returns (q int8 [m, k], scale fp32 [m])."""
    xf = x.float()
    absmax = xf.abs().amax(-1) if xf.shape[-1] else torch.zeros(xf.shape[:-1])
    inv = torch.where(absmax > 0, torch.full_like(absmax, 127.0) / absmax, torch.zeros_like(absmax))
    q = torch.round(xf * inv.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q, absmax / 127.0


def int8_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
                act: str = "dynamic") -> torch.Tensor:
    """Reference for ops.int8_linear. act="dynamic": quantize x per token, exact integer dot
    products per group, then the fp32 epilogue in the kernels' order (int8_linear.h), so the
    result is bit-identical. act="none": x @ dequantized(W).T + bias in float64."""
    if act == "none":
        return linear(x, weight.to_dense(torch.float64), bias)
    x2 = x.reshape(-1, weight.cols)
    qx, sx = quantize_per_token(x2)
    qw, scale = weight.qweight(), weight.scale()
    width = weight.cols if weight.group_size is None else weight.group_size
    s = torch.zeros(x2.shape[0], weight.rows)
    for g in range(scale.shape[1]):
        cols = slice(g * width, (g + 1) * width)
        dot = qx[:, cols].double() @ qw[:, cols].double().T  # exact: |dot| < 2^53
        s = s + dot.float() * scale[:, g]
    y = s * sx.unsqueeze(-1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.rows)
