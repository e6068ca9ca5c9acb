"""The packed layout the 4-bit lookup kernels share (``int4`` and ``codebook`` formats; see
csrc/include/sparseinfer/lut4_linear.h): 4-bit indices in 32-byte chunk rows, per-(row, group)
fp32 scales with uint8 zeros (int4) or fp32 offsets (codebook), and optional per-(row, group) tables of 16 levels (uint8, the integer
path) and 16 fp32 values (the float path).

Index layout: rows padded to blocks of 4, columns to chunks of 64 (index 0); for chunk j of
row r, byte b holds column 64 j + b in its low nibble and 64 j + 32 + b in its high nibble;
``nibbles`` is uint8 [rows_p / 4, kp / 64, 4, 32].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .._native import _C
from .groups import by_group, ceil_div, check_group_size, num_groups  # noqa: F401 (int4 / codebook use them as lut4.*)

ROW_BLOCK = _C.build_info()["lut4_row_block"]
CHUNK = _C.build_info()["lut4_chunk_cols"]
MAX_COLS = _C.build_info()["lut4_max_cols"]
ENTRIES = 16
LEVEL_MAX = 127  # codebook levels for the integer path: 7 bits (u8 x s8 pair sums fit int16)


def padded_dims(rows: int, cols: int) -> tuple[int, int]:
    return ceil_div(rows, ROW_BLOCK) * ROW_BLOCK, ceil_div(cols, CHUNK) * CHUNK


def pack_indices(idx: torch.Tensor) -> torch.Tensor:
    """uint8 indices [rows, cols] (0..15) -> the kernel's nibbles [rows_p/4, kp/64, 4, 32]."""
    rows, cols = idx.shape
    rows_p, kp = padded_dims(rows, cols)
    a = np.zeros((rows_p, kp), dtype=np.uint8)
    a[:rows, :cols] = idx.numpy()
    a = a.reshape(rows_p, kp // CHUNK, 2, 32)
    packed = a[:, :, 0, :] | (a[:, :, 1, :] << 4)  # [rows_p, chunks, 32]
    packed = packed.reshape(rows_p // ROW_BLOCK, ROW_BLOCK, kp // CHUNK, 32).transpose(0, 2, 1, 3)
    return torch.from_numpy(np.ascontiguousarray(packed))


def unpack_indices(nibbles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of pack_indices: uint8 [rows, cols]."""
    rb, chunks = nibbles.shape[0], nibbles.shape[1]
    a = nibbles.numpy().transpose(0, 2, 1, 3).reshape(rb * ROW_BLOCK, chunks, 32)
    full = np.stack((a & 15, a >> 4), axis=2).reshape(rb * ROW_BLOCK, chunks * CHUNK)
    return torch.from_numpy(np.ascontiguousarray(full[:rows, :cols]))


def words_from_indices(idx: torch.Tensor) -> torch.Tensor:
    """uint8 indices [rows, cols] -> int32 [rows, ceil(cols / 8)], 8 per word, LSB first: the
    compressed-tensors pack-quantized 4-bit layout (which stores q + 8; an index is that value)."""
    rows, cols = idx.shape
    width = ceil_div(cols, 8)
    a = np.zeros((rows, width * 8), dtype=np.uint8)
    a[:, :cols] = idx.numpy()
    pairs = a.reshape(rows, width * 4, 2)
    packed = np.ascontiguousarray(pairs[:, :, 0] | (pairs[:, :, 1] << 4))  # little-endian words
    return torch.from_numpy(packed.view(np.int32).reshape(rows, width).copy())


def indices_from_words(words: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of words_from_indices (any int32 content is valid: every nibble is an index)."""
    rows = words.shape[0]
    b = words.contiguous().numpy().view(np.uint8).reshape(rows, -1)
    full = np.stack((b & 15, b >> 4), axis=-1).reshape(rows, -1)
    return torch.from_numpy(np.ascontiguousarray(full[:, :cols]))


def blocked(t: torch.Tensor, rows_p: int) -> torch.Tensor:
    """[rows, groups] -> [rows_p/4, groups, 4] (padding rows zero), same dtype."""
    padded = torch.zeros(rows_p, t.shape[1], dtype=t.dtype)
    padded[: t.shape[0]] = t
    return padded.view(rows_p // ROW_BLOCK, ROW_BLOCK, t.shape[1]).transpose(1, 2).contiguous()


def unblocked(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of blocked: [rows, groups]."""
    return t.transpose(1, 2).reshape(-1, t.shape[1])[:rows].contiguous()


def padded_rows(t: torch.Tensor, rows_p: int) -> torch.Tensor:
    """[rows, ...] -> [rows_p, ...] zero-padded, contiguous."""
    if t.shape[0] == rows_p:
        return t.contiguous()
    out = torch.zeros((rows_p,) + tuple(t.shape[1:]), dtype=t.dtype)
    out[: t.shape[0]] = t
    return out


@dataclass(frozen=True)
class Lut4CpuPacked:
    nibbles: torch.Tensor                  # uint8 [rows_p/4, kp/64, 4, 32]
    scales: torch.Tensor                   # fp32 [rows_p/4, groups, 4]
    zeros: Optional[torch.Tensor] = None   # uint8 [rows_p/4, groups, 4] (int4: zero point + 8)
    offsets: Optional[torch.Tensor] = None  # fp32 [rows_p/4, groups, 4] (codebook)
    levels: Optional[torch.Tensor] = None  # uint8 [rows_p, groups, 16] (codebook)
    table: Optional[torch.Tensor] = None   # fp32 [rows_p, groups, 16] (codebook)

    def tensors(self) -> tuple:
        return tuple(t for t in (self.nibbles, self.scales, self.zeros, self.offsets, self.levels, self.table)
                     if t is not None)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def bytes_read(self, nnz: int, path: str) -> int:
        """Weight bytes a call streams: indices, scales, zeros or offsets and the path's table."""
        table = self.table if path.endswith("_float") else self.levels
        return sum(t.numel() * t.element_size() for t in (self.nibbles, self.scales, self.zeros, self.offsets, table)
                   if t is not None)


def codebook_levels(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 tables [rows, groups, 16] -> (levels uint8 [rows, groups, 16] in 0..127, scale, offset
    [rows, groups]) with table ~ scale * level - offset: the 7-bit grid over each table's range
    (error at most scale / 2)."""
    lo, hi = table.amin(-1), table.amax(-1)
    scale = (hi - lo) / LEVEL_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    levels = torch.round((table - lo.unsqueeze(-1)) / safe.unsqueeze(-1)).clamp_(0, LEVEL_MAX).to(torch.uint8)
    return levels, scale, -lo
