"""The CUDA layout of a 2:4 + int8 weight (format ``2:4+int8``) for the sparse tensor cores:
``mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32``, the weight the sparse A
operand (16 rows x 64 columns, 32 kept int8 values a row), the int8 tokens B. Plain torch; no GPU.

Rows go in tiles of 16 and columns in k tiles of 64 (one mma.sp). Per (row tile, k tile):
- ``values`` int8 [row_tiles, k_tiles, 32 lanes, 16]: lane 4g + t's A fragment a0..a15, one
  16-byte load (a warp reads 512 contiguous bytes). a0-a3 are row g's kept values of columns
  8t .. 8t + 7, a4-a7 row g + 8's, a8-a15 the same for columns 32 + 8t .. 32 + 8t + 7; kept values
  in column order (PTX ISA 9.7.14.6.2.6).
- ``meta`` int32 [row_tiles, k_tiles, 32 lanes] (sparsity selector 0, the only one this shape
  has): lane T holds row (T >> 2) + 8 (T & 1), columns 32 ((T >> 1) & 1) .. + 31, nibble n (bits
  4n .. 4n + 3) for the group of columns 4n .. 4n + 3 of that range: the first kept position in
  bits 0-1, the second, larger one in bits 2-3 (ordered metadata). A group with fewer than two
  non-zeros keeps its lowest free positions, with zero values.
- ``scales`` fp32 [row_tiles, groups, 16]: a tile's 16 row scales contiguous per scale group.
Padding rows and columns (to 16 / 64) hold zero values, metadata 0x44444444 (positions 0, 1) and
zero scales. A scale group of 32 columns splits a k tile: the kernel runs such a tile as two
mma.sp, passing zero registers for a8-a15, then for a0-a7 (exact: the halves are the groups).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import reference
from .errors import FormatError
from .groups import ceil_div, check_group_size, num_groups
from .int8 import Int8
from .sparse24 import Sparse24
from .sparse_int8 import MAX_COLS, Sparse24Int8

TILE_ROWS = 16
TILE_COLS = 64               # dense columns of one mma.sp m16n8k64
KEPT_COLS = TILE_COLS // 2   # kept int8 values per row and k tile
GROUPS = TILE_COLS // 4      # groups of 4 columns per row and k tile
PAD_META = 0x44444444        # every nibble 0b0100: positions 0 and 1
_CHUNK_TILES = 16            # row tiles packed at a time (bounds the int64 scratch)


def _fail(name: str, message: str) -> None:
    raise FormatError(f"Sparse24Int8 (CUDA layout) {name}: {message}", array=name, detail=message)


def _fragment_map() -> torch.Tensor:
    """[32, 16]: lane, byte -> row * 32 + kept column within a 16x32 compressed tile."""
    lane = torch.arange(32).view(32, 1)
    p = torch.arange(16).view(1, 16)
    g, t = lane // 4, lane % 4
    row = g + 8 * ((p >> 2) & 1)
    kept = 4 * t + (p & 3) + 16 * (p >> 3)
    return (row * KEPT_COLS + kept).contiguous()


def _meta_map() -> torch.Tensor:
    """[32, 8]: lane, nibble -> row * 16 + group within a 16x64 tile."""
    lane = torch.arange(32).view(32, 1)
    n = torch.arange(8).view(1, 8)
    row = lane // 4 + 8 * (lane & 1)
    group = 8 * ((lane >> 1) & 1) + n
    return (row * GROUPS + group).contiguous()


def _kept(code: int) -> list[int]:
    """The two ascending positions a group keeps when its non-zeros are the set bits of `code`
    (at most two: callers prove the 2:4 pattern first), filled up with the lowest free ones."""
    nonzero = [i for i in range(4) if code >> i & 1]
    free = [i for i in range(4) if i not in nonzero]
    return sorted(nonzero + free[: max(0, 2 - len(nonzero))])[:2]


FRAGMENT = _fragment_map()
META = _meta_map()
_POSITIONS = torch.tensor([_kept(code) for code in range(16)], dtype=torch.int64)  # [16, 2]
_NIBBLES = _POSITIONS[:, 0] | (_POSITIONS[:, 1] << 2)                               # [16]
_CODE_BITS = torch.tensor([1, 2, 4, 8], dtype=torch.int64)
_SHIFTS = 4 * torch.arange(8, dtype=torch.int64)


@dataclass(frozen=True)
class Sparse24Int8CudaPacked:
    values: torch.Tensor   # int8 [row_tiles, k_tiles, 32, 16]
    meta: torch.Tensor     # int32 [row_tiles, k_tiles, 32]
    scales: torch.Tensor   # fp32 [row_tiles, groups, 16]
    rows: int
    cols: int
    group_size: Optional[int]

    def nbytes(self) -> int:
        """Bytes of the layout: what one call streams (the bytes ceiling of a benchmark)."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.meta, self.scales))


def pack(qweight: torch.Tensor, scale: torch.Tensor, group_size: Optional[int] = None) -> Sparse24Int8CudaPacked:
    """The layout of a 2:4 int8 weight (CPU, safe on untrusted data): ``qweight`` int8 [rows, cols]
    with at most 2 non-zeros in every 4 consecutive columns, ``scale`` float [rows], [rows, 1] or
    [rows, groups] (finite, >= 0). Raises FormatError (a ValueError) naming the bad array."""
    try:
        scale = Int8.validate_quantized(qweight, scale, group_size, max_cols=MAX_COLS)
    except FormatError as exc:
        _fail(exc.array, exc.detail)
    problem = Sparse24.first_violation(qweight)
    if problem is not None:
        _fail("qweight", f"not 2:4: {problem}")
    rows, cols = qweight.shape
    rt, kt = ceil_div(rows, TILE_ROWS), ceil_div(cols, TILE_COLS)
    q = torch.zeros(rt * TILE_ROWS, kt * TILE_COLS, dtype=torch.int8)
    q[:rows, :cols] = qweight
    values = torch.empty(rt, kt, 32, 16, dtype=torch.int8)
    meta = torch.empty(rt, kt, 32, dtype=torch.int32)
    for t0 in range(0, rt, _CHUNK_TILES):
        t1 = min(rt, t0 + _CHUNK_TILES)
        values[t0:t1], meta[t0:t1] = _pack_tiles(q[t0 * TILE_ROWS:t1 * TILE_ROWS])
    return Sparse24Int8CudaPacked(values, meta, _blocked(scale.float(), rt), rows, cols, group_size)


def from_weight(weight: Sparse24Int8) -> Sparse24Int8CudaPacked:
    """The layout of a packed :class:`~sparseinfer.formats.Sparse24Int8` (already validated)."""
    if not isinstance(weight, Sparse24Int8):
        raise TypeError(f"weight must be a Sparse24Int8, got {type(weight).__name__}")
    return pack(weight.qweight(), weight.scale(), weight.group_size)


def _pack_tiles(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 [n * 16, kt * 64] (2:4) -> (values [n, kt, 32, 16], meta int32 [n, kt, 32])."""
    n, kt = q.shape[0] // TILE_ROWS, q.shape[1] // TILE_COLS
    groups = q.view(n * TILE_ROWS, kt * GROUPS, 4)
    code = ((groups != 0).to(torch.int64) * _CODE_BITS).sum(-1)          # non-zero bits per group
    kept = torch.gather(groups, -1, _POSITIONS[code])                     # [rows, groups, 2]
    tiles = kept.view(n, TILE_ROWS, kt, KEPT_COLS).transpose(1, 2).reshape(n, kt, TILE_ROWS * KEPT_COLS)
    values = tiles[:, :, FRAGMENT.view(-1)].view(n, kt, 32, 16)
    nib = _NIBBLES[code].view(n, TILE_ROWS, kt, GROUPS).transpose(1, 2).reshape(n, kt, TILE_ROWS * GROUPS)
    words = (nib[:, :, META.view(-1)].view(n, kt, 32, 8) << _SHIFTS).sum(-1)
    meta = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return values, meta


def _blocked(scale: torch.Tensor, row_tiles: int) -> torch.Tensor:
    """fp32 [rows, groups] -> [row_tiles, groups, 16] (padding rows zero)."""
    padded = torch.zeros(row_tiles * TILE_ROWS, scale.shape[1])
    padded[: scale.shape[0]] = scale
    return padded.view(row_tiles, TILE_ROWS, scale.shape[1]).transpose(1, 2).contiguous()


def _decode(p: Sparse24Int8CudaPacked) -> torch.Tensor:
    """The padded dense int8 [row_tiles * 16, k_tiles * 64] (shapes and metadata proven)."""
    rt, kt = p.values.shape[:2]
    tiles = torch.empty(rt, kt, TILE_ROWS * KEPT_COLS, dtype=torch.int8)
    tiles[:, :, FRAGMENT.view(-1)] = p.values.reshape(rt, kt, TILE_ROWS * KEPT_COLS)
    kept = tiles.view(rt, kt, TILE_ROWS, KEPT_COLS).transpose(1, 2).reshape(rt * TILE_ROWS, kt * GROUPS, 2)
    nib = torch.empty(rt, kt, TILE_ROWS * GROUPS, dtype=torch.int64)
    nib[:, :, META.view(-1)] = _nibbles(p.meta).reshape(rt, kt, TILE_ROWS * GROUPS)
    nib = nib.view(rt, kt, TILE_ROWS, GROUPS).transpose(1, 2).reshape(rt * TILE_ROWS, kt * GROUPS)
    pos = torch.stack((nib & 3, nib >> 2), dim=-1)
    dense = torch.zeros(rt * TILE_ROWS, kt * GROUPS, 4, dtype=torch.int8).scatter_(-1, pos, kept)
    return dense.view(rt * TILE_ROWS, kt * TILE_COLS)


def _nibbles(meta: torch.Tensor) -> torch.Tensor:
    """int32 words [...] -> int64 nibbles [..., 8], nibble n = bits 4n .. 4n + 3."""
    return ((meta.to(torch.int64) & 0xFFFFFFFF).unsqueeze(-1) >> _SHIFTS) & 0xF


def unpack(p: Sparse24Int8CudaPacked) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight int8 [rows, cols], scale fp32 [rows, groups]) rebuilt from the layout on the CPU,
    after proving it as :func:`validate` does."""
    dense = _proven(p)[: p.rows, : p.cols].contiguous()
    scale = p.scales.cpu().transpose(1, 2).reshape(-1, p.scales.shape[1])[: p.rows].contiguous()
    return dense, scale


def validate(p: Sparse24Int8CudaPacked) -> None:
    """Prove what a kernel relies on (raises FormatError): dtypes, shapes, contiguity, 16-byte
    alignment, one device; every metadata nibble ordered (first position < second: the
    values 0b0000, 0b0101, 0b1010, 0b1111 are undefined behaviour, the others out of order);
    padding rows and columns zero; scales finite, >= 0, zero on padding rows."""
    _proven(p)


def _proven(p: Sparse24Int8CudaPacked) -> torch.Tensor:
    """validate's checks; returns the padded dense int8 weight (CPU)."""
    rows, cols, group_size = p.rows, p.cols, p.group_size
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (rows, cols)):
        _fail("shape", f"rows and cols must be non-negative integers, got {(rows, cols)}")
    try:
        check_group_size(group_size)
    except ValueError as exc:
        _fail("group_size", str(exc))
    rt, kt = ceil_div(rows, TILE_ROWS), ceil_div(cols, TILE_COLS)
    groups = num_groups(cols, group_size)
    expect = (("values", p.values, torch.int8, (rt, kt, 32, 16)), ("meta", p.meta, torch.int32, (rt, kt, 32)),
              ("scales", p.scales, torch.float32, (rt, groups, TILE_ROWS)))
    for name, t, dtype, shape in expect:
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
            _fail(name, f"must be a {dtype} tensor of shape {shape}, got {getattr(t, 'dtype', type(t).__name__)} "
                  f"of shape {tuple(getattr(t, 'shape', ()))}")
        if not t.is_contiguous() or (t.numel() and t.data_ptr() % 16) or t.device != p.values.device:
            _fail(name, "must be contiguous, 16-byte aligned and on the values' device")
    nib = _nibbles(p.meta.cpu())
    if bool(((nib & 3) >= (nib >> 2)).any()):
        _fail("meta", "every nibble must hold two increasing positions (first in bits 0-1)")
    dense = _decode(Sparse24Int8CudaPacked(p.values.cpu(), p.meta.cpu(), p.scales, rows, cols, group_size))
    if bool(dense[rows:].any()) or bool(dense[:, cols:].any()):
        _fail("values", "padding rows and columns must hold zero")
    scales = p.scales.cpu().transpose(1, 2).reshape(-1, groups)
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()) or bool(scales[rows:].any()):
        _fail("scales", "must be finite and >= 0, and zero on padding rows")
    return dense


class _Quantized:
    """The int8 weight interface reference._w8a8_rows reads (qweight, scale, group_size, rows, cols)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, group_size: Optional[int]):
        self._q, self._scale, self.group_size = q, scale, group_size
        self.rows, self.cols = q.shape

    def qweight(self) -> torch.Tensor:
        return self._q

    def scale(self) -> torch.Tensor:
        return self._scale


def reference_w8a8(x_q: torch.Tensor, x_scale: torch.Tensor, packed: Sparse24Int8CudaPacked,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What the W8A8 kernel computes, in plain torch: tokens quantized per token (x_q int8 [m, cols]
    in -127..127, x_scale fp32 [m], as reference.quantize_per_token makes them) against the dense
    int8 weight unpacked from `packed`: exact int32 dot products per scale group, then
    reference.int8_linear's fp32 epilogue in its order (sum_g dot_g * scale_g, times x_scale, plus
    bias). Returns fp32 [m, rows], before the cast to the activation dtype; a token whose x_scale is
    not finite gets a meaningless row (the op replaces it)."""
    qweight, scale = unpack(packed)
    rows, cols = qweight.shape
    if not isinstance(x_q, torch.Tensor) or not isinstance(x_scale, torch.Tensor):
        raise TypeError("x_q and x_scale must be torch.Tensors")
    if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] != cols:
        raise ValueError(f"x_q must be int8 [m, {cols}], got {x_q.dtype} of shape {tuple(x_q.shape)}")
    if bool((x_q == -128).any()):
        raise ValueError("x_q must lie in -127..127 (per-token quantization never makes -128)")
    m = x_q.shape[0]
    if x_scale.dtype != torch.float32 or x_scale.numel() != m or x_scale.dim() not in (1, 2):
        raise ValueError(f"x_scale must be fp32 [{m}] or [{m}, 1], got {x_scale.dtype} of shape {tuple(x_scale.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (rows,)):
        raise ValueError(f"bias must be a tensor of shape ({rows},)")
    # _w8a8_rows quantizes float tokens itself. One more column of 127, meeting zero weights, sets
    # every token's max |x| to 127: it then quantizes x_q exactly with scale 1 and returns the bare
    # sum_g dot_g * scale_g (a group it adds has scale 0 and adds +0.0, which changes nothing).
    x = torch.cat((x_q.float(), torch.full((m, 1), 127.0)), 1)
    q = torch.cat((qweight, torch.zeros(rows, 1, dtype=torch.int8)), 1)
    s = torch.zeros(rows, num_groups(cols + 1, packed.group_size))
    s[:, : scale.shape[1]] = scale
    y, _ = reference._w8a8_rows(x, _Quantized(q, s, packed.group_size))
    y = y * x_scale.reshape(m, 1)
    return y if bias is None else y + bias.float()
