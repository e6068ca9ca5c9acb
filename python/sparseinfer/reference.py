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
    even; a zero row gets q = 0 and scale 0. A token holding a NaN or an inf cannot be quantized:
    its q row is 0 and its scale max|x| / 127 is NaN (it holds a NaN) or +inf, which marks it.
    Returns (q int8 [m, k], scale fp32 [m])."""
    xf = x.float()
    absmax = xf.abs().amax(-1) if xf.shape[-1] else torch.zeros(xf.shape[:-1])  # amax keeps NaN
    finite = torch.isfinite(absmax)
    xf = torch.where(finite.unsqueeze(-1), xf, torch.zeros_like(xf))
    inv = torch.where(finite & (absmax > 0), torch.full_like(absmax, 127.0) / absmax, torch.zeros_like(absmax))
    q = torch.round(xf * inv.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q, absmax / 127.0


def _nonfinite_rows(x: torch.Tensor, weight) -> torch.Tensor:
    """int8_linear's rows for tokens x [n, cols] that hold a NaN or an inf (before bias): the sum
    over the token's non-finite columns k of x[k] * dequant(W)[:, k], in fp32. Every term is NaN
    or +-inf, so the sum is order-free: NaN if the token holds a NaN, an inf meets a zero weight
    or infinities of both signs meet, else that infinity (x @ dequant(W).T as F.linear propagates
    it; the finite columns, left out, could only matter by overflowing)."""
    width = weight.cols if weight.group_size is None else weight.group_size
    group = torch.arange(weight.cols) // width
    w = weight.qweight().float() * weight.scale().float()[:, group]  # fp32, as the kernels round it
    rows = []
    for xt in x.float():
        bad = ~torch.isfinite(xt)
        rows.append((xt[bad].unsqueeze(0) * w[:, bad]).sum(-1))
    return torch.stack(rows) if rows else torch.zeros(0, weight.rows)


def int8_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
                act: str = "dynamic") -> torch.Tensor:
    """Reference for ops.int8_linear. act="dynamic": quantize x per token, exact integer dot
    products per group, then the fp32 epilogue in the kernels' order (int8_linear.h), so the
    result is bit-identical; a token holding a NaN or an inf is not quantized: its row is
    _nonfinite_rows (+ bias), NaN / +-inf where x @ dequant(W).T has them. act="none":
    x @ dequantized(W).T + bias in float64 (NaN and inf propagate as in F.linear)."""
    if act == "none":
        return linear(x, weight.to_dense(torch.float64), bias)
    x2 = x.reshape(-1, weight.cols)
    y, bad = _w8a8_rows(x2, weight)
    if bool(bad.any()):
        y[bad] = _nonfinite_rows(x2[bad], weight)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.rows)


def _w8a8_rows(x2: torch.Tensor, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """The W8A8 rows (fp32, before bias) of x2 [m, cols] against a weight with int8 values
    (qweight(), scale(), group_size), in the kernels' epilogue order, and the mask of tokens that
    could not be quantized (their rows are meaningless here)."""
    qx, sx = quantize_per_token(x2)
    qw, scale = weight.qweight(), weight.scale()
    width = weight.cols if weight.group_size is None else weight.group_size
    s = torch.zeros(x2.shape[0], weight.rows)
    for g in range(scale.shape[1]):
        cols = slice(g * width, (g + 1) * width)
        dot = qx[:, cols].double() @ qw[:, cols].double().T  # exact: |dot| < 2^53
        s = s + dot.float() * scale[:, g]
    return s * sx.unsqueeze(-1), ~torch.isfinite(sx)


def lut4_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
                act: str = "dynamic") -> torch.Tensor:
    """Reference for ops.lut4_linear (formats Int4 and Codebook). act="none": x @ W.T + bias in
    float64 with W the exact weight. act="dynamic": x quantized per token as int8_linear does,
    integer dot products of the 4-bit levels per group, then
    y = scale_x * (sum_g scale_g * dot_g - sum_g offset_g * xsum_g) + bias (lut4_linear.h); a
    token holding a NaN or an inf takes the act="none" row."""
    from .formats import lut4 as layout
    if act == "none":
        return linear(x, weight.to_dense(torch.float64), bias)
    x2 = x.reshape(-1, weight.cols)
    qx, sx = quantize_per_token(x2)
    p = weight.packed
    scales = layout.unblocked(p.scales, weight.rows).double()
    offsets = (layout.unblocked(p.offsets, weight.rows).double() if p.zeros is None
               else scales * layout.unblocked(p.zeros, weight.rows).double())
    idx = weight.indices().to(torch.int64)
    groups, width = scales.shape[1], weight.cols if weight.group_size is None else weight.group_size
    y = torch.zeros(x2.shape[0], weight.rows, dtype=torch.float64)
    for g in range(groups):
        cols = slice(g * width, min(weight.cols, (g + 1) * width))
        lv = idx[:, cols]
        if p.levels is not None:
            lv = torch.gather(p.levels[: weight.rows, g].to(torch.int64), 1, lv)
        dot = qx[:, cols].double() @ lv.double().T  # exact: |dot| < 2^53
        xsum = qx[:, cols].double().sum(-1, keepdim=True)
        y += dot * scales[:, g] - xsum * offsets[:, g]
    y = (y * sx.double().unsqueeze(-1)).float()
    bad = ~torch.isfinite(sx)
    if bool(bad.any()):
        y[bad] = linear(x2[bad], weight.to_dense(torch.float64)).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.rows)


def _stored_sum(x: torch.Tensor, weight) -> torch.Tensor:
    """sum over the weight's stored (non-zero) entries of x[k] * w[r, k] in float64: x @ W.T,
    except that a NaN or an inf at a pruned column does not reach the row (a sparse weight has
    no entry there to meet it)."""
    w = weight.to_dense().double()
    xd = x.double()
    if bool(torch.isfinite(xd).all()):
        return xd @ w.T
    stored = w != 0
    return torch.stack([torch.where(stored, xt * w, torch.zeros((), dtype=torch.float64)).sum(-1) for xt in xd]) \
        if xd.shape[0] else torch.zeros(0, weight.rows, dtype=torch.float64)


def sparse_int8_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
                       act: str = "dynamic") -> torch.Tensor:
    """Reference for ops.sparse_int8_linear (formats CsrInt8 and Sparse24Int8). act="dynamic":
    int8_linear's W8A8 on the int8 values (bit-identical epilogue), except that a token holding
    a NaN or an inf takes the float row; act="none" and that row: the sum over the stored
    weights of x * dequant(W) in float64 (see _stored_sum)."""
    x2 = x.reshape(-1, weight.cols)
    if act == "none":
        y = _stored_sum(x2, weight)
        y = y if bias is None else y + bias.double()
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.rows)
    y, bad = _w8a8_rows(x2, weight)
    if bool(bad.any()):
        y[bad] = _stored_sum(x2[bad], weight).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.rows)
