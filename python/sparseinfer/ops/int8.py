"""int8_linear: y = x @ W.T + bias with W an int8 weight (W8A8 dynamic or weight-only), on the
CPU kernels. The custom op (torch.ops.sparseinfer.int8_linear, with a fake kernel) checks shapes
only: any int8 content is memory-safe and any wsum/scale only changes values. Its backward (x
and bias; the weight is frozen; straight-through for act="dynamic") is registered through
ops/autograd.py, with int8_dense dequantizing the weight."""
from __future__ import annotations

from typing import Optional

import torch

from .._native import _C, DTYPE_CODES
from ..formats import int8 as fmt
from ..formats.int8 import Int8, Int8CpuPacked, check_act
from .autograd import register_frozen_weight_grad, via_custom_op
from .checks import (check_activation, check_bias, check_raw_dims, check_raw_x, check_shaped,
                     check_weight, on_tokens, ptr)


def _cpu_native(x, qweight, wsum, scales, bias, rows: int, cols: int, group_size: int,
                act: str) -> torch.Tensor:
    y = torch.empty(x.shape[0], rows, dtype=x.dtype)
    _C.int8_linear(x.shape[0], ptr(x), ptr(y), ptr(bias), DTYPE_CODES[x.dtype], rows, cols, ptr(qweight),
                   ptr(wsum), ptr(scales), scales.shape[1], group_size, fmt.ACTS[act],
                   torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::int8_linear", mutates_args=())
def _cpu_op(x: torch.Tensor, qweight: torch.Tensor, wsum: torch.Tensor, scales: torch.Tensor,
            bias: Optional[torch.Tensor], rows: int, cols: int, group_size: int, act: str) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for a packed int8 weight (see formats/int8.py);
    group_size 0 means per channel; act "dynamic" (W8A8) or "none" (weight-only)."""
    _check_cpu_raw(x, qweight, wsum, scales, bias, rows, cols, group_size, act)
    return _cpu_native(x, qweight, wsum, scales, bias, rows, cols, group_size, act)


@_cpu_op.register_fake
def _(x, qweight, wsum, scales, bias, rows, cols, group_size, act):
    return x.new_empty(x.shape[0], rows)


def _check_cpu_raw(x, qweight, wsum, scales, bias, rows, cols, group_size, act) -> None:
    """Shape/dtype guards for direct callers of torch.ops.sparseinfer.int8_linear."""
    check_act(act)
    _check_cpu_weight(qweight, wsum, scales, rows, cols, group_size)
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"x dtype must be one of {tuple(DTYPE_CODES)}, got {x.dtype}")
    check_raw_x(x, x.dtype, cols)
    check_bias(bias, x.dtype, rows)


def _check_cpu_weight(qweight, wsum, scales, rows, cols, group_size) -> None:
    if rows < 0 or cols < 0 or cols > fmt.MAX_COLS:
        raise ValueError(f"rows/cols must be non-negative and cols <= {fmt.MAX_COLS}, got {rows}, {cols}")
    if group_size:
        fmt.check_group_size(group_size)
    groups = 1 if not group_size else max(1, -(-cols // group_size))
    rb, kp = -(-rows // fmt.ROW_BLOCK), -(-cols // fmt.K_BLOCK) * fmt.K_BLOCK
    check_shaped((("qweight", qweight, torch.int8, (rb, kp // 4, fmt.ROW_BLOCK, 4)),
                  ("wsum", wsum, torch.int32, (rb, groups, fmt.ROW_BLOCK)),
                  ("scales", scales, torch.float32, (rb, groups, fmt.ROW_BLOCK))))


@torch.library.custom_op("sparseinfer::int8_dense", mutates_args=())
def _cpu_dense_op(qweight: torch.Tensor, wsum: torch.Tensor, scales: torch.Tensor, rows: int, cols: int,
                  group_size: int) -> torch.Tensor:
    """The dequantized fp32 [rows, cols] weight q * scale of a packed int8 weight (the backward's
    dX = dY @ dequant(W)); plain torch, any content is safe."""
    _check_cpu_weight(qweight, wsum, scales, rows, cols, group_size)
    weight = Int8((rows, cols), 0, Int8CpuPacked(qweight, wsum, scales), group_size or None, torch.float32)
    return weight.to_dense()


@_cpu_dense_op.register_fake
def _(qweight, wsum, scales, rows, cols, group_size):
    return scales.new_empty(rows, cols)


# act="dynamic" quantizes x per token inside the op: its gradient is the straight-through one,
# dX = dY @ dequant(W), as for act="none" (see ops/autograd.py)
register_frozen_weight_grad(_cpu_op, lambda a: _cpu_dense_op(*a[1:4], *a[5:8]), bias_arg=4)


def int8_linear(x: torch.Tensor, weight: Int8, bias: Optional[torch.Tensor] = None,
                act: str = "dynamic") -> torch.Tensor:
    """y = x @ W.T + bias with W an :class:`~sparseinfer.formats.Int8` of shape [out, in].

    act="dynamic" (W8A8): every token of x is quantized to int8 inside the call (symmetric, per
    token), dot products run in int32 and dequantization + bias are fused; the result is
    bit-identical to reference.int8_linear on every ISA tier. A token holding a NaN or +-inf cannot
    be quantized: its row is computed from its non-finite columns alone, sum_k x[k] *
    dequant(W)[:, k] (+ bias), so it is NaN or +-inf exactly where x @ dequant(W).T (F.linear,
    act="none") is: NaN if the token holds a NaN, an inf meets a zero weight or infinities of
    both signs meet, otherwise that infinity. Other tokens are unaffected. act="none" (weight-only): the int8
    weights are dequantized in registers and multiplied with x in fp32 (best for small m).

    x: [..., in] contiguous CPU tensor in the weight's activation dtype (``weight.dtype``: fp32,
    bf16 or fp16); any number of leading dims, including zero tokens. Returns [..., out] in x's dtype.
    """
    check_weight(weight, Int8)
    check_act(act)
    check_activation(x, bias, weight)
    p = weight.packed
    # eager: skip the dispatcher, unless compile / trace / autograd needs the op (ops/autograd.py)
    op = _cpu_op if via_custom_op(x, bias) else _cpu_native
    return on_tokens(x, weight, lambda x2: op(x2, p.qweight, p.wsum, p.scales, bias, weight.rows,
                                              weight.cols, weight.group_size or 0, act))


def int8_linear_path(weight: Int8, m: int, act: str = "dynamic") -> str:
    """Which kernel path int8_linear takes for m tokens on the active ISA tier: amx_tiles,
    vnni_rows, avx2_rows or reference for act="dynamic"; dequant_rows (or dequant_tiles: chunks
    dequantized once for several tokens, avx2 tier) for act="none"."""
    return _C.int8_linear_path(check_act(act), int(m), weight.groups, weight.group_size or 0)
