"""sparse_int8_linear: y = x @ W.T + bias with W a pruned weight with int8 values (formats
CsrInt8 and Sparse24Int8), on the CPU kernels; act="dynamic" (W8A8: activations quantized to
int8 per token, exact integer dot products, int8_linear's epilogue) or "none" (fp32 math over the
stored weights). The custom op (torch.ops.sparseinfer.sparse_int8_linear, with a fake kernel)
checks shapes and proves, once per layout, the contents its kernels' memory safety rests on
(counts, step_wp and pair_steps). Its backward (x and bias; the weight is frozen; straight-through for
act="dynamic") goes through ops/autograd.py, with sparse_int8_dense rebuilding the weight."""
from __future__ import annotations

import weakref
from typing import Optional

import torch

from .._native import _C, DTYPE_CODES
from ..formats import sparse_int8_layout as layout
from ..formats.groups import check_group_size, num_groups
from ..formats.int8 import check_act
from ..formats.sparse_int8 import CsrInt8, SparseInt8
from .autograd import register_frozen_weight_grad, via_custom_op
from .checks import check_activation, check_bias, check_raw_x, on_tokens, ptr


def _cpu_native(x, values, idx, counts, step_wp, pair_steps, scales, bias, rows: int, cols: int, group_size: int,
                uniform: bool, act: str) -> torch.Tensor:
    y = torch.empty(x.shape[0], rows, dtype=x.dtype)
    _C.sparse_int8_linear(x.shape[0], ptr(x), ptr(y), ptr(bias), DTYPE_CODES[x.dtype], rows, cols, ptr(values),
                          ptr(idx), ptr(counts), ptr(step_wp), ptr(pair_steps), values.shape[0], uniform, ptr(scales),
                          scales.shape[1], group_size, check_act(act), torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::sparse_int8_linear", mutates_args=())
def _cpu_op(x: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor, step_wp: torch.Tensor,
            pair_steps: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor], rows: int, cols: int,
            group_size: int, uniform: bool, act: str) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for the sparse int8 layout (formats/sparse_int8_layout.py);
    group_size 0 means per channel; uniform: the 2:4 layout."""
    _check_weight(values, idx, counts, step_wp, pair_steps, scales, rows, cols, group_size, uniform)
    check_act(act)
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"x dtype must be one of {tuple(DTYPE_CODES)}, got {x.dtype}")
    check_raw_x(x, x.dtype, cols)
    check_bias(bias, x.dtype, rows)
    return _cpu_native(x, values, idx, counts, step_wp, pair_steps, scales, bias, rows, cols, group_size, uniform, act)


@_cpu_op.register_fake
def _(x, values, idx, counts, step_wp, pair_steps, scales, bias, rows, cols, group_size, uniform, act):
    return x.new_empty(x.shape[0], rows)


# Layouts proved since their tensors last changed: id(counts) -> (weak refs, tensor versions).
_PROVED: dict[int, tuple] = {}


def _check_weight(values, idx, counts, step_wp, pair_steps, scales, rows: int, cols: int, group_size: int,
                  uniform: bool) -> None:
    if rows < 0 or cols < 0 or cols > layout.MAX_COLS:
        raise ValueError(f"rows/cols must be non-negative and cols <= {layout.MAX_COLS}, got {rows}, {cols}")
    if group_size:
        check_group_size(group_size)
    tensors = (values, idx, counts, step_wp, pair_steps, scales)
    seen = _PROVED.get(id(counts))
    if seen is not None and all(ref() is t for ref, t in zip(seen[0], tensors)) \
            and seen[1] == tuple(t._version for t in tensors) and seen[2] == (rows, cols, group_size, uniform):
        return
    packed = layout.SparseInt8Packed(*tensors, uniform)
    layout.prove(packed, rows, cols, num_groups(cols, group_size or None))
    key = id(counts)
    _PROVED[key] = (tuple(weakref.ref(t) for t in tensors), tuple(t._version for t in tensors),
                    (rows, cols, group_size, uniform))
    weakref.finalize(counts, _PROVED.pop, key, None)


@torch.library.custom_op("sparseinfer::sparse_int8_dense", mutates_args=())
def _cpu_dense_op(values: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor, step_wp: torch.Tensor,
                  pair_steps: torch.Tensor, scales: torch.Tensor, rows: int, cols: int,
                  group_size: int, uniform: bool) -> torch.Tensor:
    """The fp32 [rows, cols] dequantized weight (the backward's dX = dY @ W)."""
    _check_weight(values, idx, counts, step_wp, pair_steps, scales, rows, cols, group_size, uniform)
    packed = layout.SparseInt8Packed(values, idx, counts, step_wp, pair_steps, scales, uniform)
    return CsrInt8((rows, cols), 0, packed, group_size or None, torch.float32).to_dense()


@_cpu_dense_op.register_fake
def _(values, idx, counts, step_wp, pair_steps, scales, rows, cols, group_size, uniform):
    return scales.new_empty(rows, cols)


register_frozen_weight_grad(_cpu_op, lambda a: _cpu_dense_op(*a[1:7], *a[8:12]), bias_arg=7)


def sparse_int8_linear(x: torch.Tensor, weight: SparseInt8, bias: Optional[torch.Tensor] = None,
                       act: str = "dynamic") -> torch.Tensor:
    """y = x @ W.T + bias with W a :class:`~sparseinfer.formats.CsrInt8` or
    :class:`~sparseinfer.formats.Sparse24Int8` of shape [out, in].

    act="dynamic" (W8A8): every token of x is quantized to int8 inside the call (symmetric, per
    token, as int8_linear does), the stored int8 values meet it in exact integer dot products and
    the scales and bias are applied in fp32 in int8_linear's order (bit-identical on every ISA
    tier). A token holding a NaN or an inf runs the float path instead. act="none": fp32 math
    over the stored weights (a NaN or an inf at a pruned column does not reach the output).

    x: [..., in] contiguous CPU tensor in the weight's activation dtype (``weight.dtype``).
    Returns [..., out] in x's dtype.
    """
    if not isinstance(weight, SparseInt8):
        raise ValueError(f"weight must be a sparseinfer.formats.CsrInt8 or a sparseinfer.formats.Sparse24Int8, "
                         f"got {type(weight).__name__}")
    check_act(act)
    check_activation(x, bias, weight)
    p = weight.packed
    op = _cpu_op if via_custom_op(x, bias) else _cpu_native
    return on_tokens(x, weight, lambda x2: op(x2, p.values, p.idx, p.counts, p.step_wp, p.pair_steps, p.scales, bias,
                                              weight.rows, weight.cols, weight.group_size or 0, p.uniform, act))


def sparse_int8_linear_path(weight: SparseInt8, m: int, act: str = "dynamic") -> str:
    """The kernel path sparse_int8_linear takes for m tokens on the active ISA tier:
    "avx2_dynamic", "avx2_float", "reference_dynamic" or "reference_float"."""
    return _C.sparse_int8_linear_path(check_act(act), int(m))
