"""The CPU kernel layout of a 2:4 weight (see csrc/include/sparseinfer/sparse24_linear.h).

Columns zero-padded to whole 32-column chunks and rows interleaved in quads (padded with zero
rows) so every kernel streams the weight sequentially: ``values`` [rows/4, chunks, 4, 16] and
``meta`` int32 [rows/4, chunks, 4, 1] holding, per (row, chunk), the 2-bit in-group column of
each of its 16 slots. Any meta value is memory-safe (a slot can only address its own group), so
only shapes guard the kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._native import SPARSE24_CHUNK_COLS
from .errors import FormatError

CHUNK_SLOTS = SPARSE24_CHUNK_COLS // 2
QUAD = 4
SHIFTS = 2 * torch.arange(CHUNK_SLOTS, dtype=torch.int64)


def _quads(rows: int) -> int:
    return -(-rows // QUAD)


def _interleave(t: torch.Tensor, chunks: int, k: int) -> torch.Tensor:
    """[rows, chunks * k] row-major -> [rows/4, chunks, 4, k] (zero rows pad the last quad)."""
    rows, quads = t.shape[0], _quads(t.shape[0])
    padded = torch.zeros(quads * QUAD, t.shape[1], dtype=t.dtype)
    padded[:rows] = t
    return padded.view(quads, QUAD, chunks, k).transpose(1, 2).contiguous()


def _row_major(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of _interleave: [rows/4, chunks, 4, k] -> [rows, chunks * k]."""
    quads, chunks, _, k = t.shape
    return t.transpose(1, 2).reshape(quads * QUAD, chunks * k)[:rows]


@dataclass(frozen=True)
class Sparse24CpuPacked:
    values: torch.Tensor  # [rows/4, chunks, 4, 16], weight dtype
    meta: torch.Tensor    # int32 [rows/4, chunks, 4, 1] (uint32 bit patterns)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.meta))

    def bytes_read(self, nnz: int, path: str) -> int:
        """Weight bytes a call streams: the whole layout on every path."""
        return self.nbytes()

    def slots(self, rows: int, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot values, in-group positions), row-major [rows, chunks * 16], on the CPU."""
        meta = _row_major(self.meta, rows).to(torch.int64) & 0xFFFFFFFF
        pos = ((meta.unsqueeze(-1) >> SHIFTS) & 3).reshape(rows, chunks * CHUNK_SLOTS)
        return _row_major(self.values, rows), pos

    def to_dense(self, rows: int, cols: int, chunks: int) -> torch.Tensor:
        values, pos = self.slots(rows, chunks)
        columns = (torch.arange(chunks * CHUNK_SLOTS) // 2) * 4 + pos
        dense = torch.zeros(rows, chunks * SPARSE24_CHUNK_COLS, dtype=values.dtype)
        dense.scatter_(1, columns, values)
        return dense[:, :cols].contiguous()

    def with_dtype(self, dtype: torch.dtype) -> "Sparse24CpuPacked":
        return Sparse24CpuPacked(self.values.to(dtype), self.meta)

    def validate_layout(self, rows: int, cols: int, chunks: int) -> torch.Tensor:
        """Shapes, dtypes and placement (raises FormatError); returns the padding rows' values,
        which must all be zero."""
        quads = _quads(rows)
        for name, t, shape in (("values", self.values, (quads, chunks, QUAD, CHUNK_SLOTS)),
                               ("meta", self.meta, (quads, chunks, QUAD, 1))):
            if tuple(t.shape) != shape:
                _fail(name, f"shape must be {shape}, got {tuple(t.shape)}")
            if not t.is_contiguous() or t.device.type != "cpu":
                _fail(name, "must be a contiguous CPU tensor")
        if self.meta.dtype != torch.int32:
            _fail("meta", f"dtype must be int32, got {self.meta.dtype}")
        return _row_major(self.values, quads * QUAD)[rows:]


def _fail(name: str, message: str) -> None:
    raise FormatError(f"Sparse24 {name}: {message}", array=name, detail=message)


def pack_slots(values: torch.Tensor, pos: torch.Tensor) -> Sparse24CpuPacked:
    """Slot values / in-group positions [rows, chunks * 16] (CPU, row-major) -> the layout."""
    rows, chunks = values.shape[0], values.shape[1] // CHUNK_SLOTS
    code = (pos.reshape(rows, chunks, CHUNK_SLOTS).to(torch.int64) << SHIFTS).sum(-1)
    meta = torch.where(code >= 2**31, code - 2**32, code).to(torch.int32).contiguous()
    return Sparse24CpuPacked(_interleave(values, chunks, CHUNK_SLOTS), _interleave(meta, chunks, 1))
