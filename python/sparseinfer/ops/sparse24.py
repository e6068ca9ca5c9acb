"""sparse24_linear: y = x @ W.T + bias with W a 2:4 weight, on the CPU and CUDA kernels.

The public function validates everything; the custom ops (torch.ops.sparseinfer.sparse24_linear
and sparse24_linear_cuda, with fake kernels) check shapes only: any meta content is memory-safe
(a slot addresses only its own group). Their backward (x and bias; the weight is frozen) is
registered through ops/autograd.py, with sparse24_dense / sparse24_dense_cuda rebuilding the
dense weight.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._native import _C, _cuda, DTYPE_CODES, SPARSE24_CHUNK_COLS
from ..formats import sparse24_cuda
from ..formats.sparse24 import Sparse24
from ..formats.sparse24_cpu import Sparse24CpuPacked
from .autograd import register_frozen_weight_grad, via_custom_op
from .checks import (check_activation, check_bias, check_raw_dims, check_raw_x,
                     check_shaped, check_tensor, check_values_dtype, check_weight, cuda_stream, on_tokens, ptr)
from .cuda_paths import sparse24_cuda_path

_VALUE_DTYPES = tuple(DTYPE_CODES)


# ---------------------------------------------------------------------------------- CPU
def _cpu_native(x, values, meta, bias, rows: int, cols: int) -> torch.Tensor:
    y = torch.empty(x.shape[0], rows, dtype=x.dtype)
    _C.sparse24_linear(x.shape[0], ptr(x), ptr(y), ptr(bias), DTYPE_CODES[values.dtype], rows, cols,
                       ptr(values), ptr(meta), torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::sparse24_linear", mutates_args=())
def _cpu_op(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor],
            rows: int, cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for a packed 2:4 weight (see formats/sparse24_cpu.py)."""
    _check_cpu_raw(x, values, meta, bias, rows, cols)
    return _cpu_native(x, values, meta, bias, rows, cols)


@_cpu_op.register_fake
def _(x, values, meta, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_cpu_raw(x, values, meta, bias, rows, cols) -> None:
    """Shape/dtype guards for direct callers of torch.ops.sparseinfer.sparse24_linear."""
    _check_cpu_weight(values, meta, rows, cols)
    check_raw_x(x, values.dtype, cols)
    check_bias(bias, values.dtype, rows)


def _check_cpu_weight(values, meta, rows, cols) -> None:
    check_values_dtype(values, _VALUE_DTYPES)
    check_raw_dims(rows, cols)
    chunks, quads = -(-cols // SPARSE24_CHUNK_COLS), -(-rows // 4)
    check_shaped((("values", values, values.dtype, (quads, chunks, 4, SPARSE24_CHUNK_COLS // 2)),
                  ("meta", meta, torch.int32, (quads, chunks, 4, 1))))


@torch.library.custom_op("sparseinfer::sparse24_dense", mutates_args=())
def _cpu_dense_op(values: torch.Tensor, meta: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The dense [rows, cols] weight of a packed CPU 2:4 weight (the backward's dX = dY @ W);
    plain torch, any meta content is safe."""
    _check_cpu_weight(values, meta, rows, cols)
    return Sparse24CpuPacked(values, meta).to_dense(rows, cols, -(-cols // SPARSE24_CHUNK_COLS))


@_cpu_dense_op.register_fake
def _(values, meta, rows, cols):
    return values.new_empty(rows, cols)


register_frozen_weight_grad(_cpu_op, lambda a: _cpu_dense_op(a[1], a[2], a[4], a[5]), bias_arg=3)


def _cpu_entry(x2: torch.Tensor, weight: Sparse24, bias) -> torch.Tensor:
    # eager: skip the dispatcher, unless compile / trace / autograd needs the op (ops/autograd.py)
    op = _cpu_op if via_custom_op(x2, bias) else _cpu_native
    return op(x2, weight.packed.values, weight.packed.meta, bias, weight.rows, weight.cols)


# ---------------------------------------------------------------------------------- CUDA
def _cuda_native(x, values, meta, bias, rows: int, cols: int, path: int = 0) -> torch.Tensor:
    """path: 0 lets the native dispatch choose (split-K up to S24_CUDA_SPLITK_MAX_M), 1 forces
    split-K, 2 the tiled kernel (measurements and tests)."""
    y = torch.empty(x.shape[0], rows, dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):  # launch on the tensors' device even when another is current
        _cuda.sparse24_linear(x.shape[0], ptr(x), x.shape[1], ptr(y), ptr(bias), DTYPE_CODES[values.dtype],
                              rows, cols, ptr(values), ptr(meta), cuda_stream(x.device), path)
    return y


@torch.library.custom_op("sparseinfer::sparse24_linear_cuda", mutates_args=(), device_types="cuda")
def _cuda_op(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor],
             rows: int, cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, ldx] @ W.T + bias for the CUDA 2:4 layout (see formats/sparse24_cuda.py);
    x's row length ldx is cols rounded up to a multiple of 8 (zero columns past cols)."""
    _check_cuda_raw(x, values, meta, bias, rows, cols)
    return _cuda_native(x, values, meta, bias, rows, cols)


@_cuda_op.register_fake
def _(x, values, meta, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_cuda_raw(x, values, meta, bias, rows, cols) -> None:
    """Shape/dtype/device guards for direct callers of torch.ops.sparseinfer.sparse24_linear_cuda."""
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"values dtype must be float16 or bfloat16, got {values.dtype}")
    _check_cuda_weight(values, meta, rows, cols)
    ldx = -(-cols // 8) * 8
    check_tensor("x", x, values.dtype, values.device)
    if x.dim() != 2 or x.shape[1] != ldx or x.data_ptr() % 16:
        raise ValueError(f"x must be [m, {ldx}] and 16-byte aligned, got {tuple(x.shape)}")
    check_bias(bias, values.dtype, rows, values.device)


def _check_cuda_weight(values, meta, rows, cols) -> None:
    """The CUDA layout's tensors against rows/cols (shapes, dtypes, device, alignment)."""
    check_values_dtype(values, _VALUE_DTYPES)
    check_raw_dims(rows, cols)
    device = values.device
    rt, kt = -(-rows // 16), 2 * -(-cols // 64)
    for name, t, dtype, shape in (("values", values, values.dtype, (rt, kt, 32, 8)),
                                  ("meta", meta, torch.int32, (rt, kt // 2, 32))):
        check_tensor(name, t, dtype, device)
        if tuple(t.shape) != shape or t.data_ptr() % 16:
            raise ValueError(f"{name} must have shape {shape} and be 16-byte aligned, got {tuple(t.shape)}")


@torch.library.custom_op("sparseinfer::sparse24_dense_cuda", mutates_args=(), device_types="cuda")
def _cuda_dense_op(values: torch.Tensor, meta: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The dense [rows, cols] weight of the CUDA 2:4 layout, built on the device (the
    dense_expand path and the backward's dX = dY @ W)."""
    _check_cuda_weight(values, meta, rows, cols)
    return sparse24_cuda.dense_on_device(sparse24_cuda.Sparse24CudaPacked(values, meta), rows, cols)


@_cuda_dense_op.register_fake
def _(values, meta, rows, cols):
    return values.new_empty(rows, cols)


register_frozen_weight_grad(_cuda_op, lambda a: _cuda_dense_op(a[1], a[2], a[4], a[5]), bias_arg=3)


def _cuda_entry(x2: torch.Tensor, weight: Sparse24, bias) -> torch.Tensor:
    p = weight.packed
    custom = via_custom_op(x2, bias)  # compile / trace / autograd: see ops/autograd.py
    if sparse24_cuda_path(weight.dtype, x2.shape[0]) == "dense_expand":
        dense = (_cuda_dense_op(p.values, p.meta, weight.rows, weight.cols) if custom
                 else sparse24_cuda.dense_on_device(p, weight.rows, weight.cols))
        return F.linear(x2, dense, bias)
    ldx = -(-weight.cols // 8) * 8
    if ldx != weight.cols:  # the kernels load x in 16-byte pieces: pad rows to a multiple of 8
        x2 = F.pad(x2, (0, ldx - weight.cols))
    elif not torch.compiler.is_compiling() and x2.data_ptr() % 16:  # (compiled: the op checks)
        x2 = x2.clone()
    op = _cuda_op if custom else _cuda_native
    return op(x2, p.values, p.meta, bias, weight.rows, weight.cols)


# ---------------------------------------------------------------------------------- public
def sparse24_linear(x: torch.Tensor, weight: Sparse24, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W.T + bias with W a :class:`~sparseinfer.formats.Sparse24` of shape [out, in].

    x: [..., in] contiguous tensor on the weight's device (CPU or CUDA), in the weight's dtype
    (fp32, bf16 or fp16); any number of leading dims, including zero tokens. Accumulates in fp32;
    returns [..., out] in x's dtype.
    """
    check_weight(weight, Sparse24)
    check_activation(x, bias, weight)
    entry = _cuda_entry if weight.is_cuda else _cpu_entry
    return on_tokens(x, weight, lambda x2: entry(x2, weight, bias))


def sparse24_linear_path(weight: Sparse24, m: int) -> str:
    """Which kernel path sparse24_linear takes for m tokens. CPU: rows or tokens; CUDA:
    mma_sp_splitk, mma_sp_tiled, or dense_expand for fp32."""
    if weight.is_cuda:
        return sparse24_cuda_path(weight.dtype, m)
    return _C.sparse24_linear_path(int(m))
