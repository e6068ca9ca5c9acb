"""The CUDA kernel layout of a CSR weight (see csrc/include/sparseinfer/cuda_linear.h).

Entries are row-major, then by 2048-column segment, then by column; each (row, segment) range
starts at a multiple of 8 entries (padding: value 0, index 0xFFFF) so a lane loads 8 values and
8 indices with one vector load each. ``index`` is the column inside its segment, stored as int16
bit patterns of uint16. ``seg_ptr`` int32 [rows * segs + 1] gives each range's start.
Built from canonical (row, col, value) triples on the CPU, then moved to the device once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._native import DTYPE_CODES, FLOAT_DTYPES, _cuda
from .csr_cpu import bitmask_from_triples
from .errors import FormatError

SEG_COLS = 2048
VEC = 8
PAD_INDEX = 0xFFFF


def _fail(name: str, message: str) -> None:
    raise FormatError(f"CSR (CUDA layout) {name}: {message}")


@dataclass(frozen=True)
class CsrCudaPacked:
    values: torch.Tensor   # [entries] (at least VEC), weight dtype
    index: torch.Tensor    # int16 [entries]
    seg_ptr: torch.Tensor  # int32 [rows * segs + 1]
    entries: int           # seg_ptr[-1]: entries the ranges cover

    has_bitmask = False  # the m=1 expand masks are a CPU-layout feature

    def nbytes(self) -> int:
        return nbytes(self)

    def bytes_read(self, nnz: int, path: str) -> int:
        """Weight bytes the row kernel streams (the whole layout, padding included)."""
        return nbytes(self)

    def triples(self, rows: int, cols: int, nnz: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return cells(self, rows, cols)

    def to_dense(self, rows: int, cols: int, nnz: int) -> torch.Tensor:
        return dense_on_device(self, rows, cols)

    def canonical_bitmask(self, rows: int, cols: int, nnz: int):
        """The sparse-bitmask arrays (compressed, bitmask, row_offsets, shape), on the CPU."""
        return bitmask_from_triples(rows, cols, *cells(self, rows, cols))

    def with_dtype(self, dtype: torch.dtype) -> "CsrCudaPacked":
        return CsrCudaPacked(self.values.to(dtype), self.index, self.seg_ptr, self.entries)

    def validate(self, rows: int, cols: int, nnz: int) -> None:
        if self.values.dtype not in FLOAT_DTYPES:
            _fail("values", f"dtype must be one of {FLOAT_DTYPES}, got {self.values.dtype}")
        validate(self, rows, cols)
        if cells(self, rows, cols)[0].numel() != nnz:
            _fail("index", f"stored entry count differs from nnz {nnz}")


def segments(cols: int) -> int:
    return -(-cols // SEG_COLS)


def pack(rows: int, cols: int, row: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
         device: torch.device) -> CsrCudaPacked:
    """(row, col, value) triples of a [rows, cols] matrix (CPU, any order) -> layout on device."""
    segs = segments(cols)
    order = torch.argsort(row * max(1, cols) + col)
    row, col, values = row[order], col[order], values[order]
    key = row * segs + col // SEG_COLS
    counts = torch.bincount(key, minlength=rows * segs)
    padded = (counts + VEC - 1) // VEC * VEC
    seg_ptr = torch.zeros(rows * segs + 1, dtype=torch.int64)
    seg_ptr[1:] = torch.cumsum(padded, 0)
    entries = int(seg_ptr[-1])
    if entries >= 2**31:
        raise ValueError(f"CSR too large for the CUDA layout ({entries} padded entries >= 2**31)")
    first = torch.cumsum(counts, 0) - counts  # first unpadded position of each range
    pos = seg_ptr[key] + torch.arange(row.numel()) - first[key]
    size = max(entries, VEC)
    out_values = torch.zeros(size, dtype=values.dtype)
    out_values[pos] = values
    index = torch.full((size,), -1, dtype=torch.int16)  # -1 == 0xFFFF: padding
    index[pos] = (col % SEG_COLS).to(torch.int16)
    return CsrCudaPacked(out_values.to(device), index.to(device),
                         seg_ptr.to(torch.int32).to(device), entries)


def _entry_keys(p: CsrCudaPacked, rows: int, segs: int) -> torch.Tensor:
    lengths = (p.seg_ptr[1:] - p.seg_ptr[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(rows * segs, device=lengths.device), lengths,
                                   output_size=p.entries)


def cells(p: CsrCudaPacked, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, col, value) of every stored non-zero, on the CPU, row-major."""
    segs = segments(cols)
    cpu = CsrCudaPacked(p.values.cpu(), p.index.cpu(), p.seg_ptr.cpu(), p.entries)
    key = _entry_keys(cpu, rows, segs)
    idx = cpu.index[: p.entries].to(torch.int64) & 0xFFFF
    real = idx != PAD_INDEX
    row = (key // max(1, segs))[real]
    col = ((key % max(1, segs)) * SEG_COLS + idx)[real]
    return row, col, cpu.values[: p.entries][real]


def dense_on_device(p: CsrCudaPacked, rows: int, cols: int) -> torch.Tensor:
    """The dense [rows, cols] weight built where the layout lives, without a host sync
    (a native kernel on CUDA; torch ops elsewhere, e.g. to test the layout on the CPU)."""
    if p.values.is_cuda and _cuda is not None:
        dense = torch.empty(rows, cols, dtype=p.values.dtype, device=p.values.device)
        with torch.cuda.device(p.values.device):
            _cuda.csr_to_dense(dense.data_ptr(), DTYPE_CODES[p.values.dtype], rows, cols,
                               p.values.data_ptr(), p.index.data_ptr(), p.seg_ptr.data_ptr(),
                               torch.cuda.current_stream().cuda_stream)
        return dense
    segs = segments(cols)
    key = _entry_keys(p, rows, segs)
    idx = p.index[: p.entries].to(torch.int64) & 0xFFFF
    flat = (key // max(1, segs)) * cols + (key % max(1, segs)) * SEG_COLS + idx
    flat = torch.where(idx == PAD_INDEX, rows * cols, flat)  # padding lands on a spare slot
    dense = torch.zeros(rows * cols + 1, dtype=p.values.dtype, device=p.values.device)
    dense[flat] = p.values[: p.entries]
    return dense[: rows * cols].view(rows, cols)


def nbytes(p: CsrCudaPacked) -> int:
    return sum(t.numel() * t.element_size() for t in (p.values, p.index, p.seg_ptr))


def validate(p: CsrCudaPacked, rows: int, cols: int) -> None:
    """Prove what the kernel relies on (memory safety first), then the matrix invariants."""
    segs = segments(cols)
    if p.seg_ptr.dtype != torch.int32 or tuple(p.seg_ptr.shape) != (rows * segs + 1,):
        _fail("seg_ptr", f"must be int32 of shape ({rows * segs + 1},), got {p.seg_ptr.dtype} "
              f"{tuple(p.seg_ptr.shape)}")
    if p.index.dtype != torch.int16 or p.index.shape != p.values.shape or p.values.dim() != 1:
        _fail("index", "must be int16, 1-D and as long as values")
    for name, t in (("values", p.values), ("index", p.index), ("seg_ptr", p.seg_ptr)):
        if not t.is_contiguous() or t.device != p.values.device:
            _fail(name, "must be contiguous and on the weight's device")
    if p.values.data_ptr() % 16 or p.index.data_ptr() % 16:
        _fail("values", "values and index must be 16-byte aligned")
    ptr = p.seg_ptr.cpu().to(torch.int64)
    if int(ptr[0]) != 0 or int(ptr[-1]) != p.entries or p.entries > p.values.numel():
        _fail("seg_ptr", f"must run from 0 to entries = {p.entries} <= {p.values.numel()}")
    if bool(((ptr[1:] - ptr[:-1]) < 0).any()) or bool((ptr % VEC != 0).any()):
        _fail("seg_ptr", f"must be non-decreasing multiples of {VEC}")
    idx = p.index[: p.entries].cpu().to(torch.int64) & 0xFFFF
    pad = idx == PAD_INDEX
    if bool((idx[~pad] >= SEG_COLS).any()):
        _fail("index", f"entries must be < {SEG_COLS} (or the padding value {PAD_INDEX})")
    if bool((p.values[: p.entries].cpu()[pad] != 0).any()):
        _fail("values", "padding entries must hold zero")
    row, col, _ = cells(p, rows, cols)
    if bool((col >= cols).any()):
        _fail("index", f"a column is outside [0, {cols})")
    key = row * max(1, cols) + col
    if key.numel() > 1 and bool((key[1:] <= key[:-1]).any()):
        _fail("index", "columns must be strictly increasing within each row")
