"""The CPU kernel layout of a CSR weight (see csrc/include/sparseinfer/csr_linear.h).

Columns are cut into panels of 128; non-zeros are stored panel-major, then by row, then by
column, each with its column inside the panel as a uint8 (so any number of columns works). Per
(panel, row) a count, per (panel, 64-row block) an offset, and, for denser matrices, a 128-bit
row mask that lets the m=1 kernel expand values into dense lanes ("load as sparse, compute as
dense"). Built from (row, col, value) triples or from well-formed sparse-bitmask arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .._native import _C, FLOAT_DTYPES, PANEL_COLS, ROW_BLOCK, VALUES_PAD
from . import host
from .bits import pack_bits, pack_bits_np, popcount
from .errors import FormatError

# At or above this density the m=1 path expands a bitmask (cost per column); below it, it
# gathers by index (cost per non-zero). Measured crossover on AVX-512 (Sapphire Rapids), see
# bench/results; on the avx2 tier (Zen 4, slow vgatherdps) the paths cross near density 0.16
# (bench/csr_m1_paths_ab.py: expand 1.21x faster at 0.2, gather 1.43x faster at 0.1).
BITMASK_MIN_DENSITY = 0.35
BITMASK_MIN_DENSITY_AVX2 = 0.16


def bitmask_min_density() -> float:
    """The crossover for the ISA tier active now (the one that will run the packed layout)."""
    return BITMASK_MIN_DENSITY_AVX2 if _C.active_isa() == "avx2" else BITMASK_MIN_DENSITY


def _fail(name: str, message: str) -> None:
    raise FormatError(f"CSR {name}: {message}", array=name, detail=message)


def wants_bitmask(bitmask, nnz: int, rows: int, cols: int) -> bool:
    """Whether to pack the m=1 expand masks: bitmask is True/False or "auto" (by density)."""
    if bitmask == "auto":
        return nnz / max(1, rows * cols) >= bitmask_min_density()
    return bool(bitmask)


@dataclass(frozen=True)
class CsrCpuPacked:
    values: torch.Tensor          # [nnz + VALUES_PAD]
    local_idx: torch.Tensor       # uint8 [nnz + VALUES_PAD]
    counts: torch.Tensor          # uint8 [panels, rows]
    block_offsets: torch.Tensor   # int64 [panels, row_blocks + 1]
    block_nnz_prefix: torch.Tensor  # int64 [row_blocks + 1]
    bitmask: Optional[torch.Tensor]  # uint8 [panels, rows, 16] or None

    @property
    def has_bitmask(self) -> bool:
        return self.bitmask is not None

    def _tensors(self) -> list[torch.Tensor]:
        tensors = [self.values, self.local_idx, self.counts, self.block_offsets, self.block_nnz_prefix]
        return tensors + ([self.bitmask] if self.bitmask is not None else [])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def bytes_read(self, nnz: int, path: str) -> int:
        """Weight bytes a call on `path` streams: values, counts, offsets, then the expand masks
        (rows_expand) or the in-panel indices (the other paths)."""
        read = nnz * self.values.element_size() + self.counts.numel() + self.block_offsets.numel() * 8
        return read + (self.bitmask.numel() if path == "rows_expand" else nnz)

    def cells(self, rows: int, nnz: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) of every stored non-zero, in packed order."""
        panels = self.counts.shape[0]
        cell = torch.repeat_interleave(torch.arange(panels * rows, dtype=torch.int64),
                                       self.counts.flatten().to(torch.int64))
        row = cell % max(1, rows)
        col = (cell // max(1, rows)) * PANEL_COLS + self.local_idx[:nnz].to(torch.int64)
        return row, col

    def triples(self, rows: int, cols: int, nnz: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row, col = self.cells(rows, nnz)
        return row, col, self.values[:nnz]

    def to_dense(self, rows: int, cols: int, nnz: int) -> torch.Tensor:
        dense = torch.zeros(rows, cols, dtype=self.values.dtype)
        row, col = self.cells(rows, nnz)
        dense[row, col] = self.values[:nnz]
        return dense

    def canonical_bitmask(self, rows: int, cols: int, nnz: int):
        """The sparse-bitmask arrays (compressed, bitmask, row_offsets, shape) of this layout, on
        the CPU, with no sort: each (panel, row) cell's values are contiguous both here and in the
        row-major order, so the values are one gather of whole cells, and the row masks (built
        here when the layout has none) are the canonical bitmask cut into panels."""
        counts = self.counts.numpy()  # uint8 [panels, rows]
        panels = counts.shape[0]
        per_cell = counts.reshape(-1).astype(np.int64)  # (panel, row) order, as stored
        if self.bitmask is not None:
            by_panel = self.bitmask.numpy()
        else:
            cell = np.repeat(np.arange(panels * rows, dtype=np.int64), per_cell)
            bits = np.zeros(panels * rows * PANEL_COLS, dtype=np.bool_)
            bits[cell * PANEL_COLS + self.local_idx.numpy()[:nnz]] = True
            by_panel = pack_bits_np(bits.reshape(panels, rows, PANEL_COLS))
        bitmask = by_panel.transpose(1, 0, 2).reshape(rows, panels * (PANEL_COLS // 8))[:, :-(-cols // 8)]
        values = host.as_numpy(self.values)[:nnz]
        if panels <= 1 or nnz == 0:  # one panel: the stored order is row-major already
            compressed = values.copy()
        else:
            compressed = np.take(values, _row_major_sources(counts, per_cell, nnz))
        row_counts = counts.sum(0, dtype=np.int64)
        return (host.from_numpy(compressed, self.values.dtype), torch.from_numpy(np.ascontiguousarray(bitmask)),
                torch.from_numpy(np.cumsum(row_counts) - row_counts), torch.tensor([rows, cols], dtype=torch.int64))

    def with_dtype(self, dtype: torch.dtype) -> "CsrCpuPacked":
        return CsrCpuPacked(self.values.to(dtype), self.local_idx, self.counts, self.block_offsets,
                            self.block_nnz_prefix, self.bitmask)

    def validate(self, rows: int, cols: int, nnz: int) -> None:
        """Re-prove the packed invariants (e.g. after tensors were loaded or mutated)."""
        panels, row_blocks = -(-cols // PANEL_COLS), -(-rows // ROW_BLOCK)
        expect = {
            "values": (nnz + VALUES_PAD,), "local_idx": (nnz + VALUES_PAD,),
            "counts": (panels, rows), "block_offsets": (panels, row_blocks + 1),
            "block_nnz_prefix": (row_blocks + 1,),
        }
        for name, shape in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                _fail(name, f"shape must be {shape}, got {tuple(t.shape)}")
            if not t.is_contiguous() or t.device.type != "cpu":
                _fail(name, "must be a contiguous CPU tensor")
        for name, dt in (("local_idx", torch.uint8), ("counts", torch.uint8),
                         ("block_offsets", torch.int64), ("block_nnz_prefix", torch.int64)):
            if getattr(self, name).dtype != dt:
                _fail(name, f"dtype must be {dt}, got {getattr(self, name).dtype}")
        if self.values.dtype not in FLOAT_DTYPES:
            _fail("values", f"dtype must be one of {FLOAT_DTYPES}, got {self.values.dtype}")
        counts = self.counts.to(torch.int64)
        if counts.numel() and int(counts.max()) > PANEL_COLS:
            _fail("counts", f"a (panel, row) count exceeds {PANEL_COLS}")
        if int(counts.sum()) != nnz:
            _fail("counts", f"sum {int(counts.sum())} != nnz {nnz}")
        if nnz and int(self.local_idx[:nnz].max()) >= PANEL_COLS:
            _fail("local_idx", f"entries must be < {PANEL_COLS}")
        row, col = self.cells(rows, nnz)
        cell_key = (col // PANEL_COLS) * max(1, rows) * PANEL_COLS + row * PANEL_COLS + col % PANEL_COLS
        if nnz > 1 and bool((cell_key[1:] <= cell_key[:-1]).any()):
            _fail("local_idx", "must be strictly increasing within each (panel, row)")
        rebuilt = pack_triples(rows, cols, row, col, self.values[:nnz], self.has_bitmask)
        for name in ("block_offsets", "block_nnz_prefix", "local_idx"):
            if not torch.equal(getattr(rebuilt, name), getattr(self, name)):
                _fail(name, "inconsistent with counts / local_idx")
        if self.bitmask is not None and not torch.equal(rebuilt.bitmask, self.bitmask):
            _fail("bitmask", "inconsistent with counts / local_idx")


def _row_major_sources(counts: np.ndarray, per_cell: np.ndarray, nnz: int) -> np.ndarray:
    """For every non-zero in row-major order, its index in the stored (panel-major) order: whole
    cells in (row, panel) order, each a run of consecutive indices, built as the running sum of
    ones with a jump at every cell start (one int64 array, no repeat / arange temporaries)."""
    panels, rows = counts.shape
    by_row = counts.T.reshape(-1).astype(np.int64)  # the cells in (row, panel) order
    stored_start = (np.cumsum(per_cell) - per_cell).reshape(panels, rows).T.reshape(-1)
    filled = by_row > 0
    cell_counts, cell_start = by_row[filled], stored_start[filled]
    src = np.ones(nnz, dtype=np.int64)
    jumps = np.empty_like(cell_start)
    jumps[0] = cell_start[0]
    jumps[1:] = cell_start[1:] - (cell_start[:-1] + cell_counts[:-1] - 1)
    src[np.cumsum(cell_counts) - cell_counts] = jumps
    return np.cumsum(src, out=src)


def bitmask_from_triples(rows: int, cols: int, row: torch.Tensor, col: torch.Tensor, values: torch.Tensor):
    """The sparse-bitmask arrays (compressed, bitmask, row_offsets, shape) from (row, col, value)
    triples in any order (any layout's, e.g. the CUDA one's), on the CPU."""
    order = torch.argsort(row * max(1, cols) + col)
    width = -(-cols // 8) * 8
    bits = torch.zeros(rows * width, dtype=torch.bool)
    bits[row * width + col] = True
    counts = torch.bincount(row, minlength=rows)
    shape = torch.tensor([rows, cols], dtype=torch.int64)
    return values[order].clone(), pack_bits(bits.view(rows, width)), torch.cumsum(counts, 0) - counts, shape


def pack_triples(rows: int, cols: int, rows_idx: torch.Tensor, cols_idx: torch.Tensor,
                 values: torch.Tensor, bitmask) -> CsrCpuPacked:
    """From (row, col, value) triples, row-major and column-sorted within a row."""
    panels = -(-cols // PANEL_COLS)
    panel = cols_idx // PANEL_COLS
    local = cols_idx - panel * PANEL_COLS
    key = panel * rows + rows_idx  # (panel, row) cell; input is already column-sorted per row
    order = torch.argsort(key, stable=True)
    key = key[order]
    local = local[order]
    counts = torch.bincount(key, minlength=panels * rows).view(panels, rows)
    mask_bytes = None
    if wants_bitmask(bitmask, values.numel(), rows, cols):
        bits = torch.zeros(panels * rows * PANEL_COLS, dtype=torch.bool)
        bits[key * PANEL_COLS + local] = True
        mask_bytes = pack_bits(bits.view(panels, rows, PANEL_COLS))
    nnz = int(values.numel())
    packed_values = torch.zeros(nnz + VALUES_PAD, dtype=values.dtype)
    packed_values[:nnz] = values[order]
    packed_idx = torch.zeros(nnz + VALUES_PAD, dtype=torch.uint8)
    packed_idx[:nnz] = local
    return _from_panels(rows, packed_values, packed_idx, counts, mask_bytes)


def pack_bitmask(compressed: torch.Tensor, bitmask: torch.Tensor, cols: int, row_counts: torch.Tensor,
                 kernel_bitmask) -> CsrCpuPacked:
    """From well-formed sparse-bitmask arrays (row-major values, [rows, ceil(cols / 8)] mask,
    set bits per row): no sort, one native pass over the non-zeros. A panel's 16 mask bytes of
    a row are exactly the kernel's 128-bit row mask."""
    rows = bitmask.shape[0]
    panels = -(-cols // PANEL_COLS)
    panel_bytes = PANEL_COLS // 8
    by_panel = np.zeros((rows, panels * panel_bytes), dtype=np.uint8)
    by_panel[:, :bitmask.shape[1]] = bitmask.numpy()
    by_panel = torch.from_numpy(np.ascontiguousarray(
        by_panel.reshape(rows, panels, panel_bytes).transpose(1, 0, 2)))  # [panels, rows, 16]
    counts = popcount(by_panel)  # [panels, rows]
    cell_offsets = (torch.cumsum(counts.flatten(), 0) - counts.flatten()).contiguous()
    row_offsets = (torch.cumsum(row_counts, 0) - row_counts).to(torch.int64).contiguous()
    nnz = int(compressed.numel())
    values = host.empty(nnz + VALUES_PAD, compressed.dtype)  # the native pass writes the first nnz
    values[nnz:] = 0
    local = host.empty(nnz + VALUES_PAD, torch.uint8)
    local[nnz:] = 0
    compressed = compressed.contiguous()
    if nnz:
        _C.csr_pack_bitmask(rows, cols, compressed.element_size(), compressed.data_ptr(),
                            bitmask.contiguous().data_ptr(),
                            row_offsets.data_ptr(), cell_offsets.data_ptr(), values.data_ptr(),
                            local.data_ptr(), torch.get_num_threads())
    mask_bytes = by_panel if wants_bitmask(kernel_bitmask, nnz, rows, cols) else None
    return _from_panels(rows, values, local, counts, mask_bytes)


def _from_panels(rows: int, packed_values, packed_idx, counts, mask_bytes) -> CsrCpuPacked:
    """The layout from the non-zeros in panel order and their in-panel columns (both
    [nnz + VALUES_PAD], zero padded), the [panels, rows] counts and optional row masks."""
    panels = counts.shape[0]
    row_blocks = -(-rows // ROW_BLOCK)
    padded = torch.zeros(panels, row_blocks * ROW_BLOCK, dtype=torch.int64)
    padded[:, :rows] = counts
    block_nnz = padded.view(panels, row_blocks, ROW_BLOCK).sum(-1)  # [panels, row_blocks]
    starts = torch.cumsum(block_nnz.flatten(), 0) - block_nnz.flatten()
    block_offsets = torch.empty(panels, row_blocks + 1, dtype=torch.int64)
    block_offsets[:, :row_blocks] = starts.view(panels, row_blocks)
    block_offsets[:, row_blocks] = (
        torch.cumsum(block_nnz.sum(1), 0) if panels else torch.zeros(0, dtype=torch.int64))
    block_nnz_prefix = torch.zeros(row_blocks + 1, dtype=torch.int64)
    block_nnz_prefix[1:] = torch.cumsum(block_nnz.sum(0), 0)
    return CsrCpuPacked(packed_values, packed_idx, counts.to(torch.uint8).contiguous(),
                        block_offsets, block_nnz_prefix, mask_bytes)
