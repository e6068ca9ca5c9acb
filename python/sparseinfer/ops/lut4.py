"""lut4_linear: y = x @ W.T + bias with W a 4-bit lookup weight (formats Int4 and Codebook), on
the CPU kernels; act="dynamic" (activations quantized to int8 per token, integer dot products)
or "none" (fp32 math). The custom op (torch.ops.sparseinfer.lut4_linear, with a fake kernel)
checks shapes only: any index, level or table content is memory-safe. Its backward (x and bias;
the weight is frozen; straight-through for act="dynamic") goes through ops/autograd.py, with
lut4_dense rebuilding the weight."""
from __future__ import annotations

from typing import Optional

import torch

from .._native import _C, DTYPE_CODES
from ..formats import lut4 as layout
from ..formats.codebook import Codebook
from ..formats.int4 import Int4
from ..formats.lut4_weight import Lut4Weight, check_act
from .autograd import register_frozen_weight_grad, via_custom_op
from .checks import check_activation, check_bias, check_raw_x, check_shaped, on_tokens, ptr


def _cpu_native(x, nibbles, scales, zeros, offsets, levels, table, bias, rows: int, cols: int, group_size: int,
                act: str) -> torch.Tensor:
    y = torch.empty(x.shape[0], rows, dtype=x.dtype)
    _C.lut4_linear(x.shape[0], ptr(x), ptr(y), ptr(bias), DTYPE_CODES[x.dtype], rows, cols, ptr(nibbles),
                   ptr(scales), ptr(zeros), ptr(offsets), ptr(levels), ptr(table), scales.shape[1], group_size,
                   check_act(act), torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::lut4_linear", mutates_args=())
def _cpu_op(x: torch.Tensor, nibbles: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
            offsets: Optional[torch.Tensor],
            levels: Optional[torch.Tensor], table: Optional[torch.Tensor], bias: Optional[torch.Tensor],
            rows: int, cols: int, group_size: int, act: str) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for a packed 4-bit lookup weight (formats/lut4.py);
    group_size 0 means per channel; levels and table are given together (codebook) or not at
    all (int4)."""
    _check_cpu_raw(x, nibbles, scales, zeros, offsets, levels, table, bias, rows, cols, group_size, act)
    return _cpu_native(x, nibbles, scales, zeros, offsets, levels, table, bias, rows, cols, group_size, act)


@_cpu_op.register_fake
def _(x, nibbles, scales, zeros, offsets, levels, table, bias, rows, cols, group_size, act):
    return x.new_empty(x.shape[0], rows)


def _check_cpu_weight(nibbles, scales, zeros, offsets, levels, table, rows, cols, group_size) -> None:
    if rows < 0 or cols < 0 or cols > layout.MAX_COLS:
        raise ValueError(f"rows/cols must be non-negative and cols <= {layout.MAX_COLS}, got {rows}, {cols}")
    if group_size:
        layout.check_group_size(group_size)
    groups = layout.num_groups(cols, group_size or None)
    rows_p, kp = layout.padded_dims(rows, cols)
    rb = rows_p // layout.ROW_BLOCK
    specs = [("nibbles", nibbles, torch.uint8, (rb, kp // layout.CHUNK, layout.ROW_BLOCK, 32)),
             ("scales", scales, torch.float32, (rb, groups, layout.ROW_BLOCK))]
    if (levels is None) != (table is None) or (levels is None) != (offsets is None) or (zeros is None) == (offsets is None):
        raise ValueError("give zeros (int4) or offsets, levels and table together (codebook)")
    if zeros is not None:
        specs.append(("zeros", zeros, torch.uint8, (rb, groups, layout.ROW_BLOCK)))
    else:
        specs.append(("offsets", offsets, torch.float32, (rb, groups, layout.ROW_BLOCK)))
    if levels is not None:
        specs += [("levels", levels, torch.uint8, (rows_p, groups, layout.ENTRIES)),
                  ("table", table, torch.float32, (rows_p, groups, layout.ENTRIES))]
    check_shaped(specs)


def _check_cpu_raw(x, nibbles, scales, zeros, offsets, levels, table, bias, rows, cols, group_size, act) -> None:
    check_act(act)
    _check_cpu_weight(nibbles, scales, zeros, offsets, levels, table, rows, cols, group_size)
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"x dtype must be one of {tuple(DTYPE_CODES)}, got {x.dtype}")
    check_raw_x(x, x.dtype, cols)
    check_bias(bias, x.dtype, rows)


def _weight(nibbles, scales, zeros, offsets, levels, table, rows, cols, group_size) -> Lut4Weight:
    packed = layout.Lut4CpuPacked(nibbles, scales, zeros, offsets, levels, table)
    cls = Int4 if table is None else Codebook
    return cls((rows, cols), 0, packed, group_size or None, torch.float32)


@torch.library.custom_op("sparseinfer::lut4_dense", mutates_args=())
def _cpu_dense_op(nibbles: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                  offsets: Optional[torch.Tensor],
                  levels: Optional[torch.Tensor], table: Optional[torch.Tensor], rows: int, cols: int,
                  group_size: int) -> torch.Tensor:
    """The fp32 [rows, cols] weight the float path multiplies (the backward's dX = dY @ W)."""
    _check_cpu_weight(nibbles, scales, zeros, offsets, levels, table, rows, cols, group_size)
    return _weight(nibbles, scales, zeros, offsets, levels, table, rows, cols, group_size).to_dense()


@_cpu_dense_op.register_fake
def _(nibbles, scales, zeros, offsets, levels, table, rows, cols, group_size):
    return scales.new_empty(rows, cols)


register_frozen_weight_grad(_cpu_op, lambda a: _cpu_dense_op(*a[1:7], *a[8:11]), bias_arg=7)


def lut4_linear(x: torch.Tensor, weight: Lut4Weight, bias: Optional[torch.Tensor] = None,
                act: str = "dynamic") -> torch.Tensor:
    """y = x @ W.T + bias with W an :class:`~sparseinfer.formats.Int4` or
    :class:`~sparseinfer.formats.Codebook` of shape [out, in].

    act="dynamic" (W4A8): every token of x is quantized to int8 inside the call (symmetric, per
    token, as int8_linear does), the 4-bit levels meet it in exact integer dot products and the
    scales, zero points and bias are applied in fp32; a codebook's table enters as its 7-bit
    grid. A token holding a NaN or an inf runs the float path instead (so it propagates them
    as F.linear does). act="none": fp32 math on the exact weights (best accuracy).

    x: [..., in] contiguous CPU tensor in the weight's activation dtype (``weight.dtype``).
    Returns [..., out] in x's dtype.
    """
    if not isinstance(weight, (Int4, Codebook)):
        raise ValueError(f"weight must be a sparseinfer.formats.Int4 or a sparseinfer.formats.Codebook, "
                         f"got {type(weight).__name__}")
    check_act(act)
    check_activation(x, bias, weight)
    p = weight.packed
    op = _cpu_op if via_custom_op(x, bias) else _cpu_native
    return on_tokens(x, weight, lambda x2: op(x2, p.nibbles, p.scales, p.zeros, p.offsets, p.levels, p.table, bias,
                                              weight.rows, weight.cols, weight.group_size or 0, act))


def lut4_linear_path(weight: Lut4Weight, m: int, act: str = "dynamic") -> str:
    """The kernel path lut4_linear takes for m tokens on the active ISA tier: "avx2_dynamic",
    "avx2_float", "reference_dynamic" or "reference_float"."""
    return _C.lut4_linear_path(check_act(act), int(m))
