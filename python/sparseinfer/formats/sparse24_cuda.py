"""The CUDA kernel layout of a 2:4 weight (see csrc/include/sparseinfer/cuda_linear.h).

Rows in tiles of 16, columns in tiles of 32 (one ``mma.sp`` m16n8k32; the same 32-column chunks
as the CPU layout, so a tile's 16 kept values are a CPU chunk's 16 slots). ``values``
[row_tiles, k_tiles, 32 lanes, 8] holds each lane's A fragment; ``meta`` int32
[row_tiles, k_tiles / 2, 32 lanes] holds the 2-bit positions: lane 4g + 2s + j carries, for k
tile 2p + s, rows g (bits 0-15) and g + 8 (bits 16-31), groups 4j .. 4j + 3, one nibble per
group (first kept position in the low 2 bits). k_tiles is even; padding groups keep slots 0, 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._native import DTYPE_CODES, FLOAT_DTYPES, _cuda
from .errors import FormatError
from .sparse24_cpu import bitmask_from_slots

TILE_ROWS = 16
TILE_SLOTS = 16  # kept values per row per 32-column tile


def _fragment_map() -> torch.Tensor:
    """[32, 8]: lane, element -> row * 16 + slot within a 16x16 compressed tile."""
    lane = torch.arange(32).view(32, 1)
    e = torch.arange(8).view(1, 8)
    g, t = lane // 4, lane % 4
    row = g + 8 * ((e >> 1) & 1)
    slot = 2 * t + (e & 1) + 8 * (e >> 2)
    return (row * TILE_SLOTS + slot).contiguous()


def _meta_map() -> torch.Tensor:
    """[32, 8]: lane, nibble -> row * 16 + selector * 8 + group within a (row tile, k-tile pair)."""
    lane = torch.arange(32).view(32, 1)
    n = torch.arange(8).view(1, 8)
    g, sel, j = lane // 4, (lane % 4) // 2, lane % 2
    row = g + 8 * (n // 4)
    group = 4 * j + n % 4
    return (row * 16 + sel * 8 + group).contiguous()


FRAGMENT = _fragment_map()
META = _meta_map()
_NIBBLE_SHIFTS = 4 * torch.arange(8, dtype=torch.int64)


@dataclass(frozen=True)
class Sparse24CudaPacked:
    values: torch.Tensor  # [row_tiles, k_tiles, 32, 8]
    meta: torch.Tensor    # int32 [row_tiles, k_tiles / 2, 32]

    def nbytes(self) -> int:
        return nbytes(self)

    def bytes_read(self, nnz: int, path: str) -> int:
        """Weight bytes the tensor-core kernels stream: the whole layout."""
        return nbytes(self)

    def slots(self, rows: int, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot values, in-group positions), row-major [rows, chunks * 16], on the CPU."""
        values, pos = slots(self, rows)
        width = chunks * TILE_SLOTS
        return values[:, :width].cpu(), pos[:, :width].cpu()

    def to_dense(self, rows: int, cols: int, chunks: int) -> torch.Tensor:
        return dense_on_device(self, rows, cols)

    def canonical_bitmask(self, rows: int, cols: int, chunks: int):
        """The sparse-24-bitmask arrays (compressed, bitmask, shape), on the CPU."""
        return bitmask_from_slots(*self.slots(rows, chunks), cols)

    def with_dtype(self, dtype: torch.dtype) -> "Sparse24CudaPacked":
        return Sparse24CudaPacked(self.values.to(dtype), self.meta)

    def validate_layout(self, rows: int, cols: int, chunks: int) -> torch.Tensor:
        """Shapes, dtypes and alignment (raises FormatError); returns every value outside the
        real [rows, chunks * 16] slots (row-tile and k-tile padding), which must all be zero."""
        validate(self, rows, cols)
        padding, _ = slots(self, -(-rows // TILE_ROWS) * TILE_ROWS)
        padding = padding.cpu()
        padding[:rows, : chunks * TILE_SLOTS] = 0
        return padding


def pack(slot_values: torch.Tensor, slot_pos: torch.Tensor, device: torch.device) -> Sparse24CudaPacked:
    """slot_values / slot_pos [rows, chunks * 16] (CPU; positions 0..3, increasing within each
    group pair) -> the layout on `device`."""
    rows, slots = slot_values.shape
    chunks = slots // TILE_SLOTS
    rt, kt = -(-rows // TILE_ROWS), 2 * -(-chunks // 2)
    sv = torch.zeros(rt * TILE_ROWS, kt * TILE_SLOTS, dtype=slot_values.dtype)
    sv[:rows, :slots] = slot_values
    sp = torch.tensor([0, 1], dtype=torch.int64).repeat(rt * TILE_ROWS, kt * TILE_SLOTS // 2)
    sp[:rows, :slots] = slot_pos
    tiles = sv.view(rt, TILE_ROWS, kt, TILE_SLOTS).permute(0, 2, 1, 3).reshape(rt, kt, 256)
    values = tiles[:, :, FRAGMENT.view(-1)].reshape(rt, kt, 32, 8)
    nibbles = sp[:, 0::2] | (sp[:, 1::2] << 2)  # [rows_pad, kt * 8 groups]
    nib = nibbles.view(rt, TILE_ROWS, kt // 2, 2 * 8).permute(0, 2, 1, 3).reshape(rt, kt // 2, 256)
    words = (nib[:, :, META.view(-1)].view(rt, kt // 2, 32, 8) << _NIBBLE_SHIFTS).sum(-1)
    meta = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return Sparse24CudaPacked(values.contiguous().to(device), meta.contiguous().to(device))


def slots(p: Sparse24CudaPacked, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of pack on p's device: (slot_values, slot_pos) [rows, k_tiles * 16]."""
    rt, kt = p.values.shape[:2]
    dev = p.values.device
    tiles = torch.empty(rt, kt, 256, dtype=p.values.dtype, device=dev)
    tiles[:, :, FRAGMENT.view(-1).to(dev)] = p.values.reshape(rt, kt, 256)
    sv = tiles.view(rt, kt, TILE_ROWS, TILE_SLOTS).permute(0, 2, 1, 3).reshape(rt * TILE_ROWS, kt * TILE_SLOTS)
    words = p.meta.to(torch.int64) & 0xFFFFFFFF
    nib_lanes = (words.unsqueeze(-1) >> _NIBBLE_SHIFTS.to(dev)) & 0xF  # [rt, kp, 32, 8]
    nib = torch.empty(rt, kt // 2, 256, dtype=torch.int64, device=dev)
    nib[:, :, META.view(-1).to(dev)] = nib_lanes.reshape(rt, kt // 2, 256)
    nibbles = nib.view(rt, kt // 2, TILE_ROWS, 16).permute(0, 2, 1, 3).reshape(rt * TILE_ROWS, kt * 8)
    sp = torch.stack((nibbles & 3, nibbles >> 2), dim=-1).reshape(rt * TILE_ROWS, kt * TILE_SLOTS)
    return sv[:rows], sp[:rows]


def dense_on_device(p: Sparse24CudaPacked, rows: int, cols: int) -> torch.Tensor:
    """The dense [rows, cols] weight built where the layout lives, without a host sync
    (a native kernel on CUDA; torch ops elsewhere, e.g. to test the layout on the CPU)."""
    if p.values.is_cuda and _cuda is not None:
        dense = torch.empty(rows, cols, dtype=p.values.dtype, device=p.values.device)
        with torch.cuda.device(p.values.device):
            _cuda.sparse24_to_dense(dense.data_ptr(), DTYPE_CODES[p.values.dtype], rows, cols,
                                    p.values.data_ptr(), p.meta.data_ptr(),
                                    torch.cuda.current_stream().cuda_stream)
        return dense
    sv, sp = slots(p, rows)
    cols_of = (torch.arange(sv.shape[1], device=sv.device) // 2) * 4 + sp
    dense = torch.zeros(rows, sv.shape[1] * 2, dtype=sv.dtype, device=sv.device)
    dense.scatter_(1, cols_of, sv)
    return dense[:, :cols]


def nbytes(p: Sparse24CudaPacked) -> int:
    return p.values.numel() * p.values.element_size() + p.meta.numel() * 4


def validate(p: Sparse24CudaPacked, rows: int, cols: int) -> None:
    """Shapes, dtypes, alignment: any metadata content is memory-safe (a slot addresses only its
    own group); the pattern invariants are checked by Sparse24.validate on the slots."""
    rt, kt = -(-rows // TILE_ROWS), 2 * -(-cols // 64)
    for name, t, shape in (("values", p.values, (rt, kt, 32, 8)), ("meta", p.meta, (rt, kt // 2, 32))):
        if tuple(t.shape) != shape:
            raise FormatError(f"Sparse24 (CUDA layout) {name}: shape must be {shape}, got {tuple(t.shape)}")
        if not t.is_contiguous() or t.data_ptr() % 16:
            raise FormatError(f"Sparse24 (CUDA layout) {name}: must be contiguous and 16-byte aligned")
    if p.meta.dtype != torch.int32 or p.meta.device != p.values.device:
        raise FormatError("Sparse24 (CUDA layout) meta: must be int32 on the values' device")
