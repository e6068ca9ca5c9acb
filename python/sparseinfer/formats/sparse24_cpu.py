"""The CPU kernel layout of a 2:4 weight (see csrc/include/sparseinfer/sparse24_linear.h).

Columns zero-padded to whole 32-column chunks and rows interleaved in quads (padded with zero
rows) so every kernel streams the weight sequentially: ``values`` [rows/4, chunks, 4, 16] and
``meta`` int32 [rows/4, chunks, 4, 1] holding, per (row, chunk), the 2-bit in-group column of
each of its 16 slots. Any meta value is memory-safe (a slot can only address its own group), so
only shapes guard the kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .._native import SPARSE24_CHUNK_COLS
from . import host
from .bits import POPCOUNT8, pack_bits
from .errors import FormatError

CHUNK_SLOTS = SPARSE24_CHUNK_COLS // 2
QUAD = 4
SHIFTS = 2 * torch.arange(CHUNK_SLOTS, dtype=torch.int64)


def _slot_positions(nibble: int) -> tuple[int, int]:
    """The two slots a group of 4 columns keeps, given which of them are non-zero (bit j of
    `nibble` = column j; at most 2 set): the non-zeros, then the lowest other columns, in
    column order. (A tail group's real columns come before its padding ones by this rule too.)"""
    nonzero = [j for j in range(4) if nibble >> j & 1]
    if len(nonzero) >= 2:
        return nonzero[0], nonzero[1]
    if nonzero and nonzero[0] >= 2:
        return 0, nonzero[0]
    return 0, 1


# Byte tables over a bitmask byte (two groups of 4 columns: low nibble first, as in the canonical
# bitmask). META_BYTE: the byte of kernel meta for those 4 slots (2 bits per slot), so a row's
# meta words are the table applied to its non-zero (or canonical) bitmask, 4 bytes per 32-column
# chunk read as a little-endian int32. KEPT_BYTE: the bitmask of the kept slots (2 per group).
# META_BITMASK: the inverse of META_BYTE (meta byte -> the columns its 4 slots name).
_NIBBLE_META = [p0 | p1 << 2 for p0, p1 in map(_slot_positions, range(16))]
_NIBBLE_KEPT = [1 << p0 | 1 << p1 for p0, p1 in map(_slot_positions, range(16))]
META_BYTE = np.array([_NIBBLE_META[b & 15] | _NIBBLE_META[b >> 4] << 4 for b in range(256)], dtype=np.uint8)
KEPT_BYTE = np.array([_NIBBLE_KEPT[b & 15] | _NIBBLE_KEPT[b >> 4] << 4 for b in range(256)], dtype=np.uint8)
META_BITMASK = np.array([(1 << (m & 3) | 1 << (m >> 2 & 3)) | (1 << (m >> 4 & 3) | 1 << (m >> 6 & 3)) << 4
                         for m in range(256)], dtype=np.uint8)


def _quads(rows: int) -> int:
    return -(-rows // QUAD)


def _interleave(t: torch.Tensor, chunks: int, k: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[rows, chunks * k] row-major -> [rows/4, chunks, 4, k] (zero rows pad the last quad), in
    one copy (into `out`, e.g. a block of quads of a larger layout, if given)."""
    t = t.contiguous()
    rows, quads = t.shape[0], _quads(t.shape[0])
    if out is None:
        out = host.empty((quads, chunks, QUAD, k), t.dtype)
    full = rows // QUAD
    if full:
        out[:full].copy_(t[: full * QUAD].view(full, QUAD, chunks, k).transpose(1, 2))
    if rows % QUAD:
        rest = rows - full * QUAD
        out[full, :, rest:] = 0
        out[full, :, :rest].copy_(t[full * QUAD:].view(rest, chunks, k).transpose(0, 1))
    return out


def _row_major(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of _interleave: [rows/4, chunks, 4, k] -> [rows, chunks * k]."""
    quads, chunks, _, k = t.shape
    out = host.empty((quads * QUAD, chunks * k), t.dtype)
    out.view(quads, QUAD, chunks, k).copy_(t.transpose(1, 2))
    return out[:rows]


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

    def canonical_bitmask(self, rows: int, cols: int, chunks: int):
        """The sparse-24-bitmask arrays (compressed, bitmask, shape) on the CPU: the bitmask is a
        byte table over the meta words; a group's slots are in column order with real columns
        first (every packer here keeps that), so a row's canonical values are its first slots."""
        values = _row_major(self.values, rows)
        meta = host.as_numpy(_row_major(self.meta, rows)).view(np.uint8)  # 4 slots per byte, little-endian
        bitmask = np.ascontiguousarray(np.take(META_BITMASK, meta)[:, : -(-cols // 8)])
        if cols % 8:
            bitmask[:, -1] &= (1 << cols % 8) - 1
        kept = 2 * (cols // 4) + min(2, cols % 4)
        if rows and not (np.take(POPCOUNT8, bitmask).sum(-1, dtype=np.int64) == kept).all():
            _fail("meta", f"every row must name {kept} distinct real columns")
        return (values[:, :kept].contiguous(), torch.from_numpy(bitmask),
                torch.tensor([[rows], [cols]], dtype=torch.int64))

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


def bitmask_from_slots(values: torch.Tensor, pos: torch.Tensor, cols: int):
    """The sparse-24-bitmask arrays (compressed, bitmask, shape) from row-major slot values and
    in-group positions [rows, chunks * 16] of any layout (e.g. the CUDA one's), on the CPU."""
    rows, slots = values.shape
    cols_of = (torch.arange(slots) // 2) * 4 + pos
    real = cols_of < cols
    compressed = values[real].view(rows, 2 * (cols // 4) + min(2, cols % 4)).clone()
    bits = torch.zeros(rows, slots * 2, dtype=torch.bool)
    bits.scatter_(1, cols_of, True)
    return compressed, pack_bits(bits[:, :cols]), torch.tensor([[rows], [cols]], dtype=torch.int64)


def empty_layout(rows: int, chunks: int, dtype: torch.dtype) -> Sparse24CpuPacked:
    """An uninitialised layout, to fill block by block with pack_block."""
    return Sparse24CpuPacked(host.empty((_quads(rows), chunks, QUAD, CHUNK_SLOTS), dtype),
                             host.empty((_quads(rows), chunks, QUAD, 1), torch.int32))


def pack_block(layout: Sparse24CpuPacked, r0: int, values: torch.Tensor, meta: torch.Tensor) -> None:
    """Rows r0.. (r0 a multiple of 4) of the layout from their slot values [n, chunks * 16] and
    meta words [n, chunks]; a block that ends mid-quad must be the last one (padding rows zero)."""
    q0, q1 = r0 // QUAD, _quads(r0 + values.shape[0])
    chunks = meta.shape[1]
    _interleave(values, chunks, CHUNK_SLOTS, out=layout.values[q0:q1])
    _interleave(meta, chunks, 1, out=layout.meta[q0:q1])


def chunk_bytes(mask_bytes: np.ndarray, chunks: int) -> np.ndarray:
    """A bitmask uint8 [rows, ceil(cols / 8)] zero padded to whole chunks: [rows, chunks * 4]."""
    if mask_bytes.shape[1] == chunks * 4:
        return np.ascontiguousarray(mask_bytes)
    padded = np.zeros((mask_bytes.shape[0], chunks * 4), dtype=np.uint8)
    padded[:, : mask_bytes.shape[1]] = mask_bytes
    return padded


def meta_words(chunk_mask: np.ndarray) -> torch.Tensor:
    """int32 [rows, chunks] meta words from a bitmask uint8 [rows, chunks * 4] (chunk_bytes) of
    at most 2 columns per group (non-zeros, or canonical kept slots)."""
    return torch.from_numpy(np.take(META_BYTE, chunk_mask).view("<i4"))


def pack_slots(values: torch.Tensor, pos: torch.Tensor) -> Sparse24CpuPacked:
    """Slot values / in-group positions [rows, chunks * 16] (CPU, row-major) -> the layout."""
    rows, chunks = values.shape[0], values.shape[1] // CHUNK_SLOTS
    code = (pos.reshape(rows, chunks, CHUNK_SLOTS).to(torch.int64) << SHIFTS).sum(-1)
    meta = torch.where(code >= 2**31, code - 2**32, code).to(torch.int32).contiguous()
    return Sparse24CpuPacked(_interleave(values, chunks, CHUNK_SLOTS), _interleave(meta, chunks, 1))
