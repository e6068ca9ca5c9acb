"""The op contract. Every tensor is checked here before a pointer goes native.

Each op has a public function (takes format objects, validates everything, raises ValueError
naming the argument) and a ``torch.library`` custom op (``torch.ops.sparseinfer.*``) with a fake
kernel so torch.compile / torch.export see it. The raw custom op checks sizes cheaply but trusts
format *contents*, which the format objects proved at pack/load time.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._native import _C, DTYPE_CODES, PANEL_COLS, ROW_BLOCK, SPARSE24_CHUNK_COLS, VALUES_PAD, _cuda
from .formats import csr_cuda, sparse24_cuda
from .formats import int8 as fmt
from .formats.csr import CSR
from .formats.csr_cuda import CsrCudaPacked
from .formats.int8 import Int8
from .formats.sparse24 import Sparse24
from .formats.sparse24_cuda import Sparse24CudaPacked

# CUDA path choice (measured on an H100: bench/results/cuda_path_sweep_h100.txt). CSR: the row
# kernel up to CSR_CUDA_MAX_M tokens, else expand to dense on the device and run cuBLAS. 2:4
# (fp16/bf16): the split-K tensor-core kernel up to S24_CUDA_SPLITK_MAX_M, the tiled one up to
# S24_CUDA_TILED_MAX_M, else expand + cuBLAS; fp32 always expands (sparse tensor cores take
# 16-bit operands).
CSR_CUDA_MAX_M = 32
S24_CUDA_SPLITK_MAX_M = _cuda.build_info()["s24_split_max_m"] if _cuda is not None else 64  # one source: the C++ dispatch
S24_CUDA_TILED_MAX_M = 1 << 62

__all__ = ["csr_linear", "csr_linear_path", "sparse24_linear", "sparse24_linear_path",
           "int8_linear", "int8_linear_path", "INT8_ACTS"]


def _check_tensor(name: str, t, dtype: torch.dtype, device: Optional[torch.device] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if device is None or device.type == "cpu":
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU (where the weight is), got {t.device}; "
                             "move the weight with .to(device) or the module with .cuda()")
    elif t.device != device:
        raise ValueError(f"{name} must be on {device} (where the weight is), got {t.device}")
    if t.dtype != dtype:
        raise ValueError(f"{name} dtype must be {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def _check_shaped(specs, device: Optional[torch.device] = None) -> None:
    """_check_tensor plus an exact shape for every (name, tensor, dtype, shape) in specs."""
    for name, t, dtype, shape in specs:
        _check_tensor(name, t, dtype, device)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def _check_bias(bias, dtype: torch.dtype, rows: int, device: Optional[torch.device] = None) -> None:
    """bias is None or a contiguous [rows] tensor of dtype (on device)."""
    if bias is not None:
        _check_tensor("bias", bias, dtype, device)
        if bias.shape != (rows,):
            raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")


def _check_activation(x, bias, weight) -> None:
    """x [..., in] and optional bias [out] against a format object (same dtype and device)."""
    _check_tensor("x", x, weight.dtype, weight.device)
    if x.dim() < 1 or x.shape[-1] != weight.cols:
        raise ValueError(f"x must have shape [..., {weight.cols}] (in_features), got {tuple(x.shape)}")
    _check_bias(bias, weight.dtype, weight.rows, weight.device)


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _csr_linear_native(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask,
                       bias, rows: int, cols: int) -> torch.Tensor:
    m = x.shape[0]
    y = torch.empty(m, rows, dtype=x.dtype)
    _C.csr_linear(m, _ptr(x), _ptr(y), _ptr(bias), DTYPE_CODES[values.dtype], rows, cols,
                  _ptr(values), _ptr(local_idx), _ptr(counts), _ptr(block_offsets),
                  _ptr(block_nnz_prefix), _ptr(bitmask), torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::csr_linear", mutates_args=())
def _csr_linear_op(x: torch.Tensor, values: torch.Tensor, local_idx: torch.Tensor,
                   counts: torch.Tensor, block_offsets: torch.Tensor,
                   block_nnz_prefix: torch.Tensor, bitmask: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for a packed CSR weight (see formats/csr.py)."""
    _check_raw_sizes(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask,
                     bias, rows, cols)
    return _csr_linear_native(x, values, local_idx, counts, block_offsets, block_nnz_prefix,
                              bitmask, bias, rows, cols)


@_csr_linear_op.register_fake
def _(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_raw_sizes(x, values, local_idx, counts, block_offsets, block_nnz_prefix, bitmask,
                     bias, rows, cols) -> None:
    """O(rows) guards for direct callers of torch.ops.sparseinfer.csr_linear."""
    if values.dtype not in DTYPE_CODES:
        raise ValueError(f"values dtype must be one of {tuple(DTYPE_CODES)}, got {values.dtype}")
    if rows < 0 or cols < 0:
        raise ValueError(f"rows/cols must be non-negative, got {rows}, {cols}")
    _check_tensor("x", x, values.dtype)
    if x.dim() != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be [m, {cols}], got {tuple(x.shape)}")
    panels, row_blocks = -(-cols // PANEL_COLS), -(-rows // ROW_BLOCK)
    _check_shaped((("counts", counts, torch.uint8, (panels, rows)),
                   ("block_offsets", block_offsets, torch.int64, (panels, row_blocks + 1)),
                   ("block_nnz_prefix", block_nnz_prefix, torch.int64, (row_blocks + 1,))))
    nnz = int(block_nnz_prefix[-1])
    _check_tensor("values", values, values.dtype)
    _check_tensor("local_idx", local_idx, torch.uint8)
    for name, t in (("values", values), ("local_idx", local_idx)):
        if t.dim() != 1 or t.numel() != nnz + VALUES_PAD:
            raise ValueError(f"{name} must be 1-D of length nnz + {VALUES_PAD} = {nnz + VALUES_PAD}")
    if panels and (int(block_offsets[-1, -1]) != nnz or int(block_offsets.min()) < 0):
        raise ValueError("block_offsets are inconsistent with nnz")
    if bitmask is not None:
        _check_tensor("bitmask", bitmask, torch.uint8)
        if tuple(bitmask.shape) != (panels, rows, PANEL_COLS // 8):
            raise ValueError(f"bitmask must have shape {(panels, rows, PANEL_COLS // 8)}")
    _check_bias(bias, values.dtype, rows)


def csr_linear(x: torch.Tensor, weight: CSR, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W.T + bias with W a :class:`~sparseinfer.formats.CSR` of shape [out, in].

    x: [..., in] contiguous tensor on the weight's device (CPU or CUDA), in the weight's dtype
    (fp32, bf16 or fp16); any number of leading dims, including zero tokens. Accumulates in fp32;
    returns [..., out] in x's dtype.
    """
    if not isinstance(weight, CSR):
        raise ValueError(f"weight must be a sparseinfer.formats.CSR, got {type(weight).__name__}")
    _check_activation(x, bias, weight)
    p = weight.packed
    if isinstance(p, CsrCudaPacked):
        return _csr_linear_cuda(x, weight, bias)
    # Eager calls skip the custom-op dispatcher (~20 us, a tenth of an m=1 call): everything
    # was validated above and at pack time. Under torch.compile the op stays visible.
    op = _csr_linear_op if torch.compiler.is_compiling() else _csr_linear_native
    y = op(x.reshape(math.prod(x.shape[:-1]), weight.cols), p.values, p.local_idx, p.counts, p.block_offsets,
           p.block_nnz_prefix, p.bitmask, bias, weight.rows, weight.cols)
    return y.reshape(*x.shape[:-1], weight.rows)


def csr_linear_path(weight: CSR, m: int) -> str:
    """Which kernel path csr_linear takes for m tokens. CPU: rows_expand, rows_gather or
    tokens; CUDA: rows (the CSR kernel) or dense_expand (dense weight built on the device + cuBLAS)."""
    if weight.is_cuda:
        return "rows" if m <= CSR_CUDA_MAX_M else "dense_expand"
    return _C.csr_linear_path(int(m), weight.has_bitmask)


# ---------------------------------------------------------------------------------- 2:4
def _sparse24_linear_native(x, values, meta, bias, rows: int, cols: int) -> torch.Tensor:
    m = x.shape[0]
    y = torch.empty(m, rows, dtype=x.dtype)
    _C.sparse24_linear(m, _ptr(x), _ptr(y), _ptr(bias), DTYPE_CODES[values.dtype], rows, cols,
                       _ptr(values), _ptr(meta), torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::sparse24_linear", mutates_args=())
def _sparse24_linear_op(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                        bias: Optional[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for a packed 2:4 weight (see formats/sparse24.py)."""
    _check_sparse24_raw_sizes(x, values, meta, bias, rows, cols)
    return _sparse24_linear_native(x, values, meta, bias, rows, cols)


@_sparse24_linear_op.register_fake
def _(x, values, meta, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_sparse24_raw_sizes(x, values, meta, bias, rows, cols) -> None:
    """Shape/dtype guards for direct callers of torch.ops.sparseinfer.sparse24_linear. Any meta
    content is memory-safe (a slot addresses only its own group), so shapes are all it takes."""
    if values.dtype not in DTYPE_CODES:
        raise ValueError(f"values dtype must be one of {tuple(DTYPE_CODES)}, got {values.dtype}")
    if rows < 0 or cols < 0:
        raise ValueError(f"rows/cols must be non-negative, got {rows}, {cols}")
    chunks, quads = -(-cols // SPARSE24_CHUNK_COLS), -(-rows // 4)
    _check_tensor("x", x, values.dtype)
    if x.dim() != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be [m, {cols}], got {tuple(x.shape)}")
    _check_shaped((("values", values, values.dtype, (quads, chunks, 4, SPARSE24_CHUNK_COLS // 2)),
                   ("meta", meta, torch.int32, (quads, chunks, 4, 1))))
    _check_bias(bias, values.dtype, rows)


def sparse24_linear(x: torch.Tensor, weight: Sparse24, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W.T + bias with W a :class:`~sparseinfer.formats.Sparse24` of shape [out, in].

    x: [..., in] contiguous tensor on the weight's device (CPU or CUDA), in the weight's dtype
    (fp32, bf16 or fp16); any number of leading dims, including zero tokens. Accumulates in fp32;
    returns [..., out] in x's dtype.
    """
    if not isinstance(weight, Sparse24):
        raise ValueError(f"weight must be a sparseinfer.formats.Sparse24, got {type(weight).__name__}")
    _check_activation(x, bias, weight)
    p = weight.packed
    if isinstance(p, Sparse24CudaPacked):
        return _sparse24_linear_cuda(x, weight, bias)
    op = _sparse24_linear_op if torch.compiler.is_compiling() else _sparse24_linear_native
    y = op(x.reshape(math.prod(x.shape[:-1]), weight.cols), p.values, p.meta, bias, weight.rows,
           weight.cols)
    return y.reshape(*x.shape[:-1], weight.rows)


def sparse24_linear_path(m: int, weight: Optional[Sparse24] = None) -> str:
    """Which kernel path sparse24_linear takes for m tokens. CPU: rows or tokens; CUDA (pass the
    weight): mma_sp_splitk, mma_sp_tiled, or dense_expand for fp32."""
    if weight is not None and weight.is_cuda:
        if weight.dtype == torch.float32 or m > S24_CUDA_TILED_MAX_M:
            return "dense_expand"
        return "mma_sp_splitk" if m <= S24_CUDA_SPLITK_MAX_M else "mma_sp_tiled"
    return _C.sparse24_linear_path(int(m))


# ---------------------------------------------------------------------------------- int8
INT8_ACTS = {"none": 0, "dynamic": 1}


def _int8_act_code(act) -> int:
    if act not in INT8_ACTS:
        raise ValueError(f"act must be one of {tuple(INT8_ACTS)}, got {act!r}")
    return INT8_ACTS[act]


def _int8_linear_native(x, qweight, wsum, scales, bias, rows: int, cols: int, group_size: int,
                        act: str) -> torch.Tensor:
    m = x.shape[0]
    y = torch.empty(m, rows, dtype=x.dtype)
    _C.int8_linear(m, _ptr(x), _ptr(y), _ptr(bias), DTYPE_CODES[x.dtype], rows, cols, _ptr(qweight),
                   _ptr(wsum), _ptr(scales), scales.shape[1], group_size, INT8_ACTS[act],
                   torch.get_num_threads())
    return y


@torch.library.custom_op("sparseinfer::int8_linear", mutates_args=())
def _int8_linear_op(x: torch.Tensor, qweight: torch.Tensor, wsum: torch.Tensor, scales: torch.Tensor,
                    bias: Optional[torch.Tensor], rows: int, cols: int, group_size: int,
                    act: str) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for a packed int8 weight (see formats/int8.py);
    group_size 0 means per channel; act "dynamic" (W8A8) or "none" (weight-only)."""
    _check_int8_raw(x, qweight, wsum, scales, bias, rows, cols, group_size, act)
    return _int8_linear_native(x, qweight, wsum, scales, bias, rows, cols, group_size, act)


@_int8_linear_op.register_fake
def _(x, qweight, wsum, scales, bias, rows, cols, group_size, act):
    return x.new_empty(x.shape[0], rows)


def _check_int8_raw(x, qweight, wsum, scales, bias, rows, cols, group_size, act) -> None:
    """Shape/dtype guards for direct callers of torch.ops.sparseinfer.int8_linear. Any int8
    content is memory-safe and any wsum/scale only changes values, so shapes are all it takes."""
    _int8_act_code(act)
    if rows < 0 or cols < 0 or cols > fmt.MAX_COLS:
        raise ValueError(f"rows/cols must be non-negative and cols <= {fmt.MAX_COLS}, got {rows}, {cols}")
    if group_size:
        fmt.check_group_size(group_size)
    groups = 1 if not group_size else max(1, -(-cols // group_size))
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"x dtype must be one of {tuple(DTYPE_CODES)}, got {x.dtype}")
    _check_tensor("x", x, x.dtype)
    if x.dim() != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be [m, {cols}], got {tuple(x.shape)}")
    rb, kp = -(-rows // fmt.ROW_BLOCK), -(-cols // fmt.K_BLOCK) * fmt.K_BLOCK
    _check_shaped((("qweight", qweight, torch.int8, (rb, kp // 4, fmt.ROW_BLOCK, 4)),
                   ("wsum", wsum, torch.int32, (rb, groups, fmt.ROW_BLOCK)),
                   ("scales", scales, torch.float32, (rb, groups, fmt.ROW_BLOCK))))
    _check_bias(bias, x.dtype, rows)


def int8_linear(x: torch.Tensor, weight: Int8, bias: Optional[torch.Tensor] = None,
                act: str = "dynamic") -> torch.Tensor:
    """y = x @ W.T + bias with W an :class:`~sparseinfer.formats.Int8` of shape [out, in].

    act="dynamic" (W8A8): every token of x is quantized to int8 inside the call (symmetric, per
    token), dot products run in int32 and dequantization + bias are fused; the result is
    bit-identical to reference.int8_linear on every ISA tier. act="none" (weight-only): the int8
    weights are dequantized in registers and multiplied with x in fp32 (best for small m).

    x: [..., in] contiguous CPU tensor in the weight's activation dtype (``weight.dtype``: fp32,
    bf16 or fp16); any number of leading dims, including zero tokens. Returns [..., out] in x's dtype.
    """
    if not isinstance(weight, Int8):
        raise ValueError(f"weight must be a sparseinfer.formats.Int8, got {type(weight).__name__}")
    _int8_act_code(act)
    _check_activation(x, bias, weight)
    p = weight.packed
    op = _int8_linear_op if torch.compiler.is_compiling() else _int8_linear_native
    x2 = x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), weight.cols)  # [m, in]: no reshape cost
    y = op(x2, p.qweight, p.wsum, p.scales, bias, weight.rows, weight.cols, weight.group_size or 0, act)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.rows)


def int8_linear_path(weight: Int8, m: int, act: str = "dynamic") -> str:
    """Which kernel path int8_linear takes for m tokens on the active ISA tier: amx_tiles,
    vnni_rows, avx2_rows or reference for act="dynamic"; dequant_rows for act="none"."""
    return _C.int8_linear_path(_int8_act_code(act), int(m), weight.groups, weight.group_size or 0)


# ---------------------------------------------------------------------------------- CUDA
# Same contract as the CPU ops; the kernels take device pointers and torch's current stream
# (so CUDA graph capture works: no sync, no allocation in native code).


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _on_device(device: torch.device):
    """Launch on the tensors' device even when another one is current."""
    return torch.cuda.device(device)


def _csr_linear_cuda_native(x, values, index, seg_ptr, bias, rows: int, cols: int) -> torch.Tensor:
    m = x.shape[0]
    y = torch.empty(m, rows, dtype=x.dtype, device=x.device)
    with _on_device(x.device):
        _cuda.csr_linear(m, _ptr(x), _ptr(y), _ptr(bias), DTYPE_CODES[values.dtype], rows, cols,
                         _ptr(values), _ptr(index), _ptr(seg_ptr), _stream(x.device))
    return y


@torch.library.custom_op("sparseinfer::csr_linear_cuda", mutates_args=(), device_types="cuda")
def _csr_linear_cuda_op(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                        seg_ptr: torch.Tensor, bias: Optional[torch.Tensor], rows: int,
                        cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, cols] @ W.T + bias for the CUDA CSR layout (see formats/csr_cuda.py)."""
    _check_csr_cuda_raw(x, values, index, seg_ptr, bias, rows, cols)
    return _csr_linear_cuda_native(x, values, index, seg_ptr, bias, rows, cols)


@_csr_linear_cuda_op.register_fake
def _(x, values, index, seg_ptr, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_csr_cuda_raw(x, values, index, seg_ptr, bias, rows, cols) -> None:
    """Shape/dtype/device guards for direct callers of torch.ops.sparseinfer.csr_linear_cuda
    (contents were proved at pack time; reading them here would sync the device)."""
    if values.dtype not in DTYPE_CODES:
        raise ValueError(f"values dtype must be one of {tuple(DTYPE_CODES)}, got {values.dtype}")
    if rows < 0 or cols < 0:
        raise ValueError(f"rows/cols must be non-negative, got {rows}, {cols}")
    device = values.device
    _check_tensor("x", x, values.dtype, device)
    if x.dim() != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be [m, {cols}], got {tuple(x.shape)}")
    _check_tensor("values", values, values.dtype, device)
    _check_tensor("index", index, torch.int16, device)
    _check_tensor("seg_ptr", seg_ptr, torch.int32, device)
    if values.dim() != 1 or index.shape != values.shape or values.data_ptr() % 16 or index.data_ptr() % 16:
        raise ValueError("values and index must be 1-D, of equal length and 16-byte aligned")
    if tuple(seg_ptr.shape) != (rows * csr_cuda.segments(cols) + 1,):
        raise ValueError(f"seg_ptr must have shape ({rows * csr_cuda.segments(cols) + 1},)")
    _check_bias(bias, values.dtype, rows, device)


def _csr_linear_cuda(x: torch.Tensor, weight: CSR, bias: Optional[torch.Tensor]) -> torch.Tensor:
    p = weight.packed
    x2 = x.reshape(math.prod(x.shape[:-1]), weight.cols)
    if csr_linear_path(weight, x2.shape[0]) == "dense_expand":
        y = F.linear(x2, csr_cuda.dense_on_device(p, weight.rows, weight.cols), bias)
    else:
        op = _csr_linear_cuda_op if torch.compiler.is_compiling() else _csr_linear_cuda_native
        y = op(x2, p.values, p.index, p.seg_ptr, bias, weight.rows, weight.cols)
    return y.reshape(*x.shape[:-1], weight.rows)


def _sparse24_linear_cuda_native(x, values, meta, bias, rows: int, cols: int, path: int = 0) -> torch.Tensor:
    """path: 0 lets the native dispatch choose (split-K up to S24_CUDA_SPLITK_MAX_M), 1 forces
    split-K, 2 the tiled kernel (measurements and tests)."""
    m = x.shape[0]
    y = torch.empty(m, rows, dtype=x.dtype, device=x.device)
    with _on_device(x.device):
        _cuda.sparse24_linear(m, _ptr(x), x.shape[1], _ptr(y), _ptr(bias), DTYPE_CODES[values.dtype],
                              rows, cols, _ptr(values), _ptr(meta), _stream(x.device), path)
    return y


@torch.library.custom_op("sparseinfer::sparse24_linear_cuda", mutates_args=(), device_types="cuda")
def _sparse24_linear_cuda_op(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                             bias: Optional[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """y[m, rows] = x[m, ldx] @ W.T + bias for the CUDA 2:4 layout (see formats/sparse24_cuda.py);
    x's row length ldx is cols rounded up to a multiple of 8 (zero columns past cols)."""
    _check_sparse24_cuda_raw(x, values, meta, bias, rows, cols)
    return _sparse24_linear_cuda_native(x, values, meta, bias, rows, cols)


@_sparse24_linear_cuda_op.register_fake
def _(x, values, meta, bias, rows, cols):
    return x.new_empty(x.shape[0], rows)


def _check_sparse24_cuda_raw(x, values, meta, bias, rows, cols) -> None:
    """Shape/dtype/device guards for direct callers of torch.ops.sparseinfer.sparse24_linear_cuda.
    Any metadata content is memory-safe, so shapes are all it takes."""
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"values dtype must be float16 or bfloat16, got {values.dtype}")
    if rows < 0 or cols < 0:
        raise ValueError(f"rows/cols must be non-negative, got {rows}, {cols}")
    device = values.device
    ldx = -(-cols // 8) * 8
    _check_tensor("x", x, values.dtype, device)
    if x.dim() != 2 or x.shape[1] != ldx or x.data_ptr() % 16:
        raise ValueError(f"x must be [m, {ldx}] and 16-byte aligned, got {tuple(x.shape)}")
    rt, kt = -(-rows // 16), 2 * -(-cols // 64)
    for name, t, dtype, shape in (("values", values, values.dtype, (rt, kt, 32, 8)),
                                  ("meta", meta, torch.int32, (rt, kt // 2, 32))):
        _check_tensor(name, t, dtype, device)
        if tuple(t.shape) != shape or t.data_ptr() % 16:
            raise ValueError(f"{name} must have shape {shape} and be 16-byte aligned, got {tuple(t.shape)}")
    _check_bias(bias, values.dtype, rows, device)


def _sparse24_linear_cuda(x: torch.Tensor, weight: Sparse24, bias: Optional[torch.Tensor]) -> torch.Tensor:
    p = weight.packed
    x2 = x.reshape(math.prod(x.shape[:-1]), weight.cols)
    if sparse24_linear_path(x2.shape[0], weight) == "dense_expand":
        y = F.linear(x2, sparse24_cuda.dense_on_device(p, weight.rows, weight.cols), bias)
        return y.reshape(*x.shape[:-1], weight.rows)
    ldx = -(-weight.cols // 8) * 8
    if ldx != weight.cols:  # the kernels load x in 16-byte pieces: pad rows to a multiple of 8
        x2 = F.pad(x2, (0, ldx - weight.cols))
    elif x2.data_ptr() % 16:
        x2 = x2.clone()
    op = _sparse24_linear_cuda_op if torch.compiler.is_compiling() else _sparse24_linear_cuda_native
    y = op(x2, p.values, p.meta, bias, weight.rows, weight.cols)
    return y.reshape(*x.shape[:-1], weight.rows)
