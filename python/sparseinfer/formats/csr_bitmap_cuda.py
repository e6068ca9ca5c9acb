"""A bitmap-tile CUDA layout of a CSR weight for 8 <= m <= 32 tokens (SpInfer's TCA-BME, EuroSys'25,
and Flash-LLM's "load as sparse, compute as dense"): a kernel expands tiles into the dense A
operand of ``mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}`` (the weight A, the tokens B as 1-4
n8 tiles). Plain torch and numpy; no GPU.

Tiles, chosen to fit the m16n8k16 fragments:
- a bitmap tile is 8x8 weights, one 64-bit word, bit 8r + c for row r, column c: lane 4g + t's
  register pair of an 8x8 quadrant is (row g, columns 2t, 2t + 1), bits 8g + 2t and + 1, found
  with one popcount of the word below them;
- a TC tile is 16x16 (one A operand): 4 bitmap tiles in the order of the A registers, top-left,
  bottom-left, top-right, bottom-right (a0a1, a2a3, a4a5, a6a7);
- a group tile is 64x64: 4x4 TC tiles, row-major (a warp owning 16 rows reads 4 consecutive TC
  tiles along K), so its 64 bitmaps are 512 contiguous bytes, one 16-byte load per lane of a warp.
Group tiles go row-major over the weight (a 64-row band's tiles consecutive along K).
``bitmaps`` int64 [group_tiles, 64]; ``values`` fp16/bf16: each group tile's non-zeros in bitmap
order, then bit order, starting at ``offsets`` int32 [group_tiles + 1] (multiples of 8: 16-byte
aligned, zero padded). A tile's bitmap offsets are prefix popcounts, computed by the kernel.
Rows and columns are padded to 64 with empty bitmaps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .bits import popcount_np
from .csr import CSR
from .errors import FormatError
from .groups import ceil_div
from .host import as_numpy

GROUP = 64      # group tile edge, rows and columns
TC = 16         # TC tile edge (m16n8k16 A operand)
BITMAP = 8      # bitmap tile edge: 64 bits
VEC = 8         # group tiles start at multiples of 8 values (16 bytes)
TILE_BITMAPS = (GROUP // BITMAP) ** 2   # 64 bitmaps per group tile
TILE_BITS = GROUP * GROUP               # 4096 weights per group tile
VALUE_DTYPES = (torch.float16, torch.bfloat16)


def _fail(name: str, message: str) -> None:
    raise FormatError(f"CSR (bitmap CUDA layout) {name}: {message}", array=name, detail=message)


@dataclass(frozen=True)
class CsrBitmapCudaPacked:
    bitmaps: torch.Tensor  # int64 [group_tiles, 64]
    values: torch.Tensor   # fp16 / bf16 [offsets[-1]]
    offsets: torch.Tensor  # int32 [group_tiles + 1]
    rows: int
    cols: int

    def nbytes(self) -> int:
        """Bytes of the layout: what one call streams (the bytes ceiling of a benchmark)."""
        return sum(t.numel() * t.element_size() for t in (self.bitmaps, self.values, self.offsets))


def grid(rows: int, cols: int) -> tuple[int, int]:
    """(row bands, column tiles) of group tiles covering a [rows, cols] weight."""
    return ceil_div(rows, GROUP), ceil_div(cols, GROUP)


def _slot_bit(r: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column inside a group tile -> (bitmap index in the tile, bit in the bitmap)."""
    tc = (r // TC) * (GROUP // TC) + c // TC
    quadrant = ((c % TC) // BITMAP) * 2 + (r % TC) // BITMAP
    return tc * 4 + quadrant, (r % BITMAP) * BITMAP + c % BITMAP


def pack(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, shape,
         dtype: torch.dtype = None) -> CsrBitmapCudaPacked:
    """The layout of canonical CSR arrays (validated: safe on untrusted data; see
    CSR.validate_arrays). Values are cast to `dtype` (default: theirs), fp16 or bf16; a zero
    the cast makes stays stored. Raises FormatError (a ValueError) naming the bad array."""
    rows, cols = CSR.validate_arrays(indptr, indices, values, shape)
    dtype = values.dtype if dtype is None else dtype
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"the tensor-core layout holds {VALUE_DTYPES} values, got {dtype}: pass dtype=")
    bands, tiles = grid(rows, cols)
    row = torch.repeat_interleave(torch.arange(rows, dtype=torch.int64), (indptr[1:] - indptr[:-1]).to(torch.int64))
    col = indices.to(torch.int64) & 0xFFFF if indices.dtype == torch.int16 else indices.to(torch.int64)
    gt = (row // GROUP) * tiles + col // GROUP
    slot, bit = _slot_bit(row % GROUP, col % GROUP)
    order = torch.argsort((gt * TILE_BITMAPS + slot) * 64 + bit)
    gt, slot, bit = gt[order], slot[order], bit[order]
    counts = torch.bincount(gt, minlength=bands * tiles)
    offsets = torch.zeros(bands * tiles + 1, dtype=torch.int64)
    torch.cumsum(ceil_div(counts, VEC) * VEC, 0, out=offsets[1:])
    if int(offsets[-1]) >= 2**31:
        raise ValueError(f"too many values for int32 offsets ({int(offsets[-1])} padded values)")
    out = torch.zeros(int(offsets[-1]), dtype=dtype)
    first = torch.cumsum(counts, 0) - counts
    out[offsets[gt] + torch.arange(gt.numel()) - first[gt]] = values[order].to(dtype)
    words = np.zeros(bands * tiles * TILE_BITMAPS, dtype=np.uint64)
    np.bitwise_or.at(words, (gt * TILE_BITMAPS + slot).numpy(), np.left_shift(np.uint64(1), bit.numpy().astype(np.uint64)))
    bitmaps = torch.from_numpy(words.view(np.int64)).view(bands * tiles, TILE_BITMAPS)
    return CsrBitmapCudaPacked(bitmaps, out, offsets.to(torch.int32), rows, cols)


def from_weight(weight: CSR, dtype: torch.dtype = None) -> CsrBitmapCudaPacked:
    """The layout of a :class:`~sparseinfer.formats.CSR` weight (on any device)."""
    if not isinstance(weight, CSR):
        raise TypeError(f"weight must be a CSR, got {type(weight).__name__}")
    indptr, indices, values = weight.to_csr_arrays()
    return pack(indptr, indices, values, weight.shape, dtype)


def _set_bits(p: CsrBitmapCudaPacked) -> tuple[torch.Tensor, ...]:
    """(group tile, row, column, value index) of every set bit, in value order, and the set
    bits per group tile; shapes and offsets proven."""
    words = as_numpy(p.bitmaps.cpu()).reshape(-1)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)  # little-endian words
    pos = torch.from_numpy(np.flatnonzero(bits))
    gt, within = pos // TILE_BITS, pos % TILE_BITS
    slot, bit = within // 64, within % 64
    tc, quadrant = slot // 4, slot % 4
    r = (tc // 4) * TC + (quadrant % 2) * BITMAP + bit // BITMAP
    c = (tc % 4) * TC + (quadrant // 2) * BITMAP + bit % BITMAP
    tiles = grid(p.rows, p.cols)[1]
    counts = torch.from_numpy(popcount_np(words.view(np.uint8).reshape(-1, TILE_BITMAPS * 8)))
    first = torch.cumsum(counts, 0) - counts
    index = p.offsets.cpu().to(torch.int64)[gt] + torch.arange(pos.numel()) - first[gt]
    return (gt // max(1, tiles)) * GROUP + r, (gt % max(1, tiles)) * GROUP + c, index, counts


def validate(p: CsrBitmapCudaPacked) -> None:
    """Prove what a kernel relies on (raises FormatError): dtypes, shapes, contiguity, one device;
    offsets from 0, non-decreasing, multiples of 8, ending at len(values); each group tile's
    slots the popcount of its bitmaps rounded up to 8; no bit outside the weight; padding zero."""
    _proven(p)


def _proven(p: CsrBitmapCudaPacked) -> tuple[torch.Tensor, ...]:
    """validate's checks; returns _set_bits(p)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (p.rows, p.cols)):
        _fail("shape", f"rows and cols must be non-negative integers, got {(p.rows, p.cols)}")
    n = grid(p.rows, p.cols)[0] * grid(p.rows, p.cols)[1]
    for name, t, ok, want in (("bitmaps", p.bitmaps, lambda t: t.dtype == torch.int64 and tuple(t.shape) == (n, 64),
                               f"int64 of shape {(n, 64)}"),
                              ("offsets", p.offsets, lambda t: t.dtype == torch.int32 and tuple(t.shape) == (n + 1,),
                               f"int32 of shape {(n + 1,)}"),
                              ("values", p.values, lambda t: t.dtype in VALUE_DTYPES and t.dim() == 1,
                               f"1-D with dtype in {VALUE_DTYPES}")):
        if not isinstance(t, torch.Tensor) or not ok(t):
            _fail(name, f"must be {want}, got {getattr(t, 'dtype', type(t).__name__)} of shape "
                  f"{tuple(getattr(t, 'shape', ()))}")
        if not t.is_contiguous() or (t.numel() and t.data_ptr() % 16) or t.device != p.values.device:
            _fail(name, "must be contiguous, 16-byte aligned and on the values' device")
    offsets = p.offsets.cpu().to(torch.int64)
    if int(offsets[0]) != 0 or int(offsets[-1]) != p.values.numel():
        _fail("offsets", f"must run from 0 to len(values) = {p.values.numel()}, got {int(offsets[0])} .. {int(offsets[-1])}")
    slots = offsets[1:] - offsets[:-1]
    if bool((slots < 0).any()) or bool((offsets % VEC).any()):
        _fail("offsets", f"must be non-decreasing multiples of {VEC}")
    row, col, index, counts = cells = _set_bits(p)
    if row.numel() and (int(row.max()) >= p.rows or int(col.max()) >= p.cols):
        _fail("bitmaps", f"a bit is set outside the {p.rows}x{p.cols} weight")
    if not torch.equal(slots, ceil_div(counts, VEC) * VEC):
        bad = int((slots != ceil_div(counts, VEC) * VEC).nonzero()[0, 0])
        _fail("offsets", f"group tile {bad} has {int(slots[bad])} value slots for {int(counts[bad])} set bits "
              f"(must be that count rounded up to {VEC})")
    padding = torch.ones(p.values.numel(), dtype=torch.bool)
    padding[index] = False
    if bool(p.values.cpu()[padding].any()):
        _fail("values", "padding slots must hold zero")
    return cells


def unpack(p: CsrBitmapCudaPacked) -> torch.Tensor:
    """The dense [rows, cols] weight (values' dtype, CPU) rebuilt from the layout after proving it
    as :func:`validate` does."""
    row, col, index, _ = _proven(p)
    dense = torch.zeros(p.rows, p.cols, dtype=p.values.dtype)
    dense[row, col] = p.values.cpu()[index]
    return dense
