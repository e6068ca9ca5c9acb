"""csr_linear: y = x @ W.T + bias with W a CSR weight, on the CPU and CUDA kernels.

The public function validates everything; the custom ops (torch.ops.sparseinfer.csr_linear and
csr_linear_cuda, with fake kernels for torch.compile / torch.export) check sizes, and the CPU op
also the layout contents its kernels' memory safety rests on (once per layout: see _PROVED). Their backward (x and bias;
the weight is frozen) is registered through ops/autograd.py, with csr_dense / csr_dense_cuda
rebuilding the dense weight.
"""
from __future__ import annotations

import weakref
from typing import Optional

import numpy as np  # on the small layout arrays its ops cost a fraction of torch's
import torch
import torch.nn.functional as F

from .._native import _C, _cuda, DTYPE_CODES, PANEL_COLS, ROW_BLOCK, VALUES_PAD
from ..formats import csr_cuda
from ..formats.csr import CSR
from ..formats.csr_cpu import CsrCpuPacked
from .autograd import register_frozen_weight_grad, via_custom_op
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
    """Guards for callers of torch.ops.sparseinfer.csr_linear (direct, torch.compile, trace,
    autograd): shapes and dtypes, then the contents the kernels' memory safety rests on, in
    vectorised O(panels x rows) ops over counts (1/16 of the bytes of a 50%-dense fp32 weight;
    ~70 us more than shape checks alone for 4096 x 4096, ~3% of its m=1 call on 2 EPYC cores,
    paid once per layout: _PROVED remembers what passed), so that no tensor contents can make a kernel read outside its buffers. The kernels read
    (panel p, row block b) from block_offsets[p, b] on, counts[p, r] values and u8 indices per
    row, row after row, plus at most VALUES_PAD - 1 past a row's end; an index may be any u8 (x
    buffers are padded by a panel). So: block_offsets are exactly the panel-major prefix sums
    of the row blocks' counts (hence from 0 up to nnz), block_nnz_prefix their sums over panels
    (nnz, the thread split), counts <= PANEL_COLS. The bitmask (expand path) reads
    popcount(mask) values per row: the kernels check that against counts themselves (one
    popcount per row and panel, free) and the native call raises ValueError on a mismatch
    (csr_linear.h, PackedCsr::mask_error)."""
    check_values_dtype(values, _VALUE_DTYPES)
    check_raw_dims(rows, cols)
    check_raw_x(x, values.dtype, cols)
    panels, row_blocks = -(-cols // PANEL_COLS), -(-rows // ROW_BLOCK)
    check_shaped((("counts", counts, torch.uint8, (panels, rows)),
                  ("block_offsets", block_offsets, torch.int64, (panels, row_blocks + 1)),
                  ("block_nnz_prefix", block_nnz_prefix, torch.int64, (row_blocks + 1,))))
    if not _layout_proved(counts, block_offsets, block_nnz_prefix):
        _prove_layout(counts, block_offsets, block_nnz_prefix, panels, rows, row_blocks)
    nnz = int(block_nnz_prefix[-1])
    check_tensor("values", values, values.dtype)
    check_tensor("local_idx", local_idx, torch.uint8)
    for name, t in (("values", values), ("local_idx", local_idx)):
        if t.dim() != 1 or t.numel() != nnz + VALUES_PAD:
            raise ValueError(f"{name} must be 1-D of length nnz + {VALUES_PAD} = {nnz + VALUES_PAD}")
    if bitmask is not None:
        check_tensor("bitmask", bitmask, torch.uint8)
        if tuple(bitmask.shape) != (panels, rows, PANEL_COLS // 8):
            raise ValueError(f"bitmask must have shape {(panels, rows, PANEL_COLS // 8)}")
    check_bias(bias, values.dtype, rows)


# Layouts whose contents _prove_layout accepted, by id of the counts tensor: weak references to
# the three arrays and their version counters then. Our own packed weights (torch.compile, trace
# and autograd call the raw op on every forward) are proved once; an in-place change or another
# array re-proves. (Keyed by id: tensors compare elementwise, so they cannot be dict keys.)
_PROVED: dict[int, tuple] = {}


def _layout_proved(counts, block_offsets, block_nnz_prefix) -> bool:
    seen = _PROVED.get(id(counts))
    return (seen is not None and seen[0]() is counts and seen[1]() is block_offsets
            and seen[2]() is block_nnz_prefix
            and seen[3] == (counts._version, block_offsets._version, block_nnz_prefix._version))


def _remember_proved(counts, block_offsets, block_nnz_prefix) -> None:
    key = id(counts)
    _PROVED[key] = (weakref.ref(counts, lambda _: _PROVED.pop(key, None)), weakref.ref(block_offsets),
                    weakref.ref(block_nnz_prefix),
                    (counts._version, block_offsets._version, block_nnz_prefix._version))


def _prove_layout(counts, block_offsets, block_nnz_prefix, panels, rows, row_blocks) -> None:
    if counts.numel() and int(counts.max()) > PANEL_COLS:
        raise ValueError(f"counts: a (panel, row) count exceeds {PANEL_COLS}")
    full = rows // ROW_BLOCK
    block = np.zeros((panels, row_blocks), np.int64)  # non-zeros of (panel, row block)
    whole = counts[:, :full * ROW_BLOCK].view(panels, full, ROW_BLOCK)
    block[:, :full] = whole.sum(-1, dtype=torch.int32).numpy()
    if full < row_blocks:
        block[:, full] = counts[:, full * ROW_BLOCK:].sum(-1, dtype=torch.int32).numpy()
    ends = np.cumsum(block).reshape(panels, row_blocks)
    offsets, prefix = block_offsets.numpy(), block_nnz_prefix.numpy()
    if (not np.array_equal(offsets[:, :row_blocks], ends - block)
            or not np.array_equal(offsets[:, row_blocks], np.cumsum(block.sum(1)))):
        raise ValueError("block_offsets are inconsistent with counts")
    if prefix[0] != 0 or not np.array_equal(prefix[1:], np.cumsum(block.sum(0))):
        raise ValueError("block_nnz_prefix is inconsistent with counts")
    _remember_proved(counts, block_offsets, block_nnz_prefix)


@torch.library.custom_op("sparseinfer::csr_dense", mutates_args=())
def _cpu_dense_op(values: torch.Tensor, local_idx: torch.Tensor, counts: torch.Tensor,
                  block_offsets: torch.Tensor, block_nnz_prefix: torch.Tensor, rows: int,
                  cols: int) -> torch.Tensor:
    """The dense [rows, cols] weight of a packed CPU CSR weight (the backward's dX = dY @ W).
    Plain torch indexing: inconsistent tensors raise, they cannot reach memory they do not own."""
    nnz = int(block_nnz_prefix[-1])
    return CsrCpuPacked(values, local_idx, counts, block_offsets, block_nnz_prefix, None).to_dense(rows, cols, nnz)


@_cpu_dense_op.register_fake
def _(values, local_idx, counts, block_offsets, block_nnz_prefix, rows, cols):
    return values.new_empty(rows, cols)


register_frozen_weight_grad(_cpu_op, lambda a: _cpu_dense_op(*a[1:6], a[8], a[9]), bias_arg=7)


def _cpu_entry(x2: torch.Tensor, weight: CSR, bias) -> torch.Tensor:
    # Eager calls skip the custom-op dispatcher (~20 us, a tenth of an m=1 call): everything
    # was validated by the caller and at pack time. Under torch.compile, jit.trace and autograd
    # the op is used (ops/autograd.py).
    op = _cpu_op if via_custom_op(x2, bias) else _cpu_native
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
    _check_cuda_weight(values, index, seg_ptr, rows, cols)
    check_raw_x(x, values.dtype, cols, values.device)
    check_bias(bias, values.dtype, rows, values.device)


def _check_cuda_weight(values, index, seg_ptr, rows, cols) -> None:
    """The CUDA layout's tensors against rows/cols (shapes, dtypes, device, alignment)."""
    check_values_dtype(values, _VALUE_DTYPES)
    check_raw_dims(rows, cols)
    device = values.device
    check_tensor("values", values, values.dtype, device)
    check_tensor("index", index, torch.int16, device)
    check_tensor("seg_ptr", seg_ptr, torch.int32, device)
    if values.dim() != 1 or index.shape != values.shape or values.data_ptr() % 16 or index.data_ptr() % 16:
        raise ValueError("values and index must be 1-D, of equal length and 16-byte aligned")
    if tuple(seg_ptr.shape) != (rows * csr_cuda.segments(cols) + 1,):
        raise ValueError(f"seg_ptr must have shape ({rows * csr_cuda.segments(cols) + 1},)")


@torch.library.custom_op("sparseinfer::csr_dense_cuda", mutates_args=(), device_types="cuda")
def _cuda_dense_op(values: torch.Tensor, index: torch.Tensor, seg_ptr: torch.Tensor, rows: int,
                   cols: int) -> torch.Tensor:
    """The dense [rows, cols] weight of the CUDA CSR layout, built on the device (the
    dense_expand path and the backward's dX = dY @ W)."""
    _check_cuda_weight(values, index, seg_ptr, rows, cols)
    # entries is read only by the torch fallback (no CUDA build); the native kernel needs no sync
    entries = 0 if _cuda is not None else int(seg_ptr[-1])
    return csr_cuda.dense_on_device(csr_cuda.CsrCudaPacked(values, index, seg_ptr, entries), rows, cols)


@_cuda_dense_op.register_fake
def _(values, index, seg_ptr, rows, cols):
    return values.new_empty(rows, cols)


register_frozen_weight_grad(_cuda_op, lambda a: _cuda_dense_op(*a[1:4], a[5], a[6]), bias_arg=4)


def _cuda_entry(x2: torch.Tensor, weight: CSR, bias) -> torch.Tensor:
    p = weight.packed
    custom = via_custom_op(x2, bias)  # compile / trace / autograd: see ops/autograd.py
    if csr_cuda_path(x2.shape[0]) == "dense_expand":
        dense = (_cuda_dense_op(p.values, p.index, p.seg_ptr, weight.rows, weight.cols) if custom
                 else csr_cuda.dense_on_device(p, weight.rows, weight.cols))
        return F.linear(x2, dense, bias)
    op = _cuda_op if custom else _cuda_native
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
