"""csr_linear: y = x @ W.T + bias with W a CSR weight, on the CPU and CUDA kernels.

The public function validates everything; the custom ops (torch.ops.sparseinfer.csr_linear and
csr_linear_cuda, with fake kernels for torch.compile / torch.export) check sizes cheaply and trust
format *contents*, which the CSR object proved at pack/load time.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._native import _C, _cuda, DTYPE_CODES, PANEL_COLS, ROW_BLOCK, VALUES_PAD
from ..formats import csr_cuda
from ..formats.csr import CSR
from .checks import (check_activation, check_bias, check_raw_dims, check_raw_x,
                     check_shaped, check_tensor, check_values_dtype, check_weight, cuda_stream, on_tokens, ptr)
from .cuda_paths import csr_cuda_path

_VALUE_DTYPES = tuple(DTYPE_CODES)


# ---------------------------------------------------------------------------------- CPU
def _cpu_native(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask, bias,
                rows: int, cols: int) -> torch.Tensor:
    y = torch.empty(x.shape[0], rows, dtype=x.dtype)
    _C.csr_linear(x.shape[0], ptr(x), ptr(y), ptr(bias), DTYPE_CODES[values.dtype], rows, cols,
                  ptr(values), ptr(local_idx), ptr(counts), ptr(block_offsets),
                  ptr(block_nnz_prefix), ptr(bitmask), torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::csr_linear", mutates_args=())
def _cpu_op(x: torch.Tensor, values: torch.Tensor, local_idx: torch.Tensor, counts: torch.Tensor,
            block_offsets: torch.Tensor, block_nnz_prefix: torch.Tensor, bitmask: Optional[torch.Tensor],
            bias: Optional[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for a packed CSR weight (see formats/csr_cpu.py)."""
    _check_cpu_raw(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask, bias, rows, cols)
    return _cpu_native(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask, bias, rows, cols)


@_cpu_op.register_fake
def _(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_cpu_raw(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask, bias,
                   rows, cols) -> None:
    """O(rows) guards for direct callers of torch.ops.sparseinfer.csr_linear."""
    check_values_dtype(values, _VALUE_DTYPES)
    check_raw_dims(rows, cols)
    check_raw_x(x, values.dtype, cols)
    panels, row_blocks = -(-cols // PANEL_COLS), -(-rows // ROW_BLOCK)
    check_shaped((("counts", counts, torch.uint8, (panels, rows)),
                  ("block_offsets", block_offsets, torch.int64, (panels, row_blocks + 1)),
                  ("block_nnz_prefix", block_nnz_prefix, torch.int64, (row_blocks + 1,))))
    nnz = int(block_nnz_prefix[-1])
    check_tensor("values", values, values.dtype)
    check_tensor("local_idx", local_idx, torch.uint8)
    for name, t in (("values", values), ("local_idx", local_idx)):
        if t.dim() != 1 or t.numel() != nnz + VALUES_PAD:
            raise ValueError(f"{name} must be 1-D of length nnz + {VALUES_PAD} = {nnz + VALUES_PAD}")
    if panels and (int(block_offsets[-1, -1]) != nnz or int(block_offsets.min()) < 0):
        raise ValueError("block_offsets are inconsistent with nnz")
    if bitmask is not None:
        check_tensor("bitmask", bitmask, torch.uint8)
        if tuple(bitmask.shape) != (panels, rows, PANEL_COLS // 8):
            raise ValueError(f"bitmask must have shape {(panels, rows, PANEL_COLS // 8)}")
    check_bias(bias, values.dtype, rows)


def _cpu_entry(x2: torch.Tensor, weight: CSR, bias) -> torch.Tensor:
    # Eager calls skip the custom-op dispatcher (~20 us, a tenth of an m=1 call): everything
    # was validated by the caller and at pack time. Under torch.compile the op stays visible.
    op = _cpu_op if torch.compiler.is_compiling() else _cpu_native
    p = weight.packed
    return op(x2, p.values, p.local_idx, p.counts, p.block_offsets, p.block_nnz_prefix, p.bitmask,
              bias, weight.rows, weight.cols)


# ---------------------------------------------------------------------------------- CUDA
# Same contract; the kernel takes device pointers and torch's current stream (so CUDA graph
# capture works: no sync, no allocation in native code).
def _cuda_native(x, values, index, seg_ptr, bias, rows: int, cols: int) -> torch.Tensor:
    y = torch.empty(x.shape[0], rows, dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):  # launch on the tensors' device even when another is current
        _cuda.csr_linear(x.shape[0], ptr(x), ptr(y), ptr(bias), DTYPE_CODES[values.dtype], rows, cols,
                         ptr(values), ptr(index), ptr(seg_ptr), cuda_stream(x.device))
    return y


@torch.library.custom_op("sparseinfer::csr_linear_cuda", mutates_args=(), device_types="cuda")
def _cuda_op(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor, seg_ptr: torch.Tensor,
             bias: Optional[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for the CUDA CSR layout (see formats/csr_cuda.py)."""
    _check_cuda_raw(x, values, index, seg_ptr, bias, rows, cols)
    return _cuda_native(x, values, index, seg_ptr, bias, rows, cols)


@_cuda_op.register_fake
def _(x, values, index, seg_ptr, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_cuda_raw(x, values, index, seg_ptr, bias, rows, cols) -> None:
    """Shape/dtype/device guards for direct callers of torch.ops.sparseinfer.csr_linear_cuda
    (contents were proved at pack time; reading them here would sync the device)."""
    check_values_dtype(values, _VALUE_DTYPES)
    check_raw_dims(rows, cols)
    device = values.device
    check_raw_x(x, values.dtype, cols, device)
    check_tensor("values", values, values.dtype, device)
    check_tensor("index", index, torch.int16, device)
    check_tensor("seg_ptr", seg_ptr, torch.int32, device)
    if values.dim() != 1 or index.shape != values.shape or values.data_ptr() % 16 or index.data_ptr() % 16:
        raise ValueError("values and index must be 1-D, of equal length and 16-byte aligned")
    if tuple(seg_ptr.shape) != (rows * csr_cuda.segments(cols) + 1,):
        raise ValueError(f"seg_ptr must have shape ({rows * csr_cuda.segments(cols) + 1},)")
    check_bias(bias, values.dtype, rows, device)


def _cuda_entry(x2: torch.Tensor, weight: CSR, bias) -> torch.Tensor:
    p = weight.packed
    if csr_cuda_path(x2.shape[0]) == "dense_expand":
        return F.linear(x2, csr_cuda.dense_on_device(p, weight.rows, weight.cols), bias)
    op = _cuda_op if torch.compiler.is_compiling() else _cuda_native
    return op(x2, p.values, p.index, p.seg_ptr, bias, weight.rows, weight.cols)


# ---------------------------------------------------------------------------------- public
def csr_linear(x: torch.Tensor, weight: CSR, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W.T + bias with W a :class:`~sparseinfer.formats.CSR` of shape [out, in].

    x: [..., in] contiguous tensor on the weight's device (CPU or CUDA), in the weight's dtype
    (fp32, bf16 or fp16); any number of leading dims, including zero tokens. Accumulates in fp32;
    returns [..., out] in x's dtype.
    """
    check_weight(weight, CSR)
    check_activation(x, bias, weight)
    entry = _cuda_entry if weight.is_cuda else _cpu_entry
    return on_tokens(x, weight, lambda x2: entry(x2, weight, bias))


def csr_linear_path(weight: CSR, m: int) -> str:
    """Which kernel path csr_linear takes for m tokens. CPU: rows_expand, rows_gather or tokens;
    CUDA: rows (the CSR kernel) or dense_expand (dense weight built on the device + cuBLAS)."""
    if weight.is_cuda:
        return csr_cuda_path(m)
    return _C.csr_linear_path(int(m), weight.has_bitmask)
