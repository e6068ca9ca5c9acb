"""Unstructured sparse (CSR) weights, packed once for the CPU kernels.

Canonical forms: checkpoints hold the compressed-tensors ``sparse-bitmask`` layout
(``to_bitmask`` / ``from_bitmask``: ``compressed`` [nnz] row-major, ``bitmask`` uint8
[rows, ceil(cols / 8)] little-endian per row, ``row_offsets`` int64 [rows], ``shape`` int64 [2]).
Plain CSR arrays are also accepted and produced (``from_csr`` / ``to_csr_arrays``): ``indptr``
int64 [rows + 1], ``indices`` [nnz] in the smallest safe width (uint16 when cols <= 65536, else
int32), ``values`` [nnz] fp32/bf16/fp16, row-major and sorted by column within a row.

Kernel form (what this object stores; see csrc/include/sparseinfer/csr_linear.h): columns are cut
into panels of 128; non-zeros are stored panel-major, then by row, then by column, each with its
column inside the panel as a uint8 (so any number of columns works). Per (panel, row) a count,
per (panel, 64-row block) an offset, and, for denser matrices, a 128-bit row mask that lets the
m=1 kernel expand values into dense lanes ("load as sparse, compute as dense"). The canonical
arrays are rebuilt from this on demand, so the values are held once.

On a CUDA device (``.to("cuda")``) the weight is re-packed once into the GPU kernels' layout
(formats/csr_cuda.py); everything else here works on either layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from .._native import _C, FLOAT_DTYPES, PANEL_COLS, ROW_BLOCK, VALUES_PAD
from . import csr_cuda
from .base import PackedWeight, canonical_shape
from .bits import pack_bits, popcount
from .csr_cuda import CsrCudaPacked
from .errors import FormatError

# At or above this density the m=1 path expands a bitmask (cost per column); below it, it
# gathers by index (cost per non-zero). Measured crossover on AVX-512, see bench/results.
BITMASK_MIN_DENSITY = 0.35


def _fail(name: str, message: str) -> None:
    raise FormatError(f"CSR {name}: {message}", array=name, detail=message)


@dataclass(frozen=True)
class _Packed:
    values: torch.Tensor          # [nnz + VALUES_PAD]
    local_idx: torch.Tensor       # uint8 [nnz + VALUES_PAD]
    counts: torch.Tensor          # uint8 [panels, rows]
    block_offsets: torch.Tensor   # int64 [panels, row_blocks + 1]
    block_nnz_prefix: torch.Tensor  # int64 [row_blocks + 1]
    bitmask: Optional[torch.Tensor]  # uint8 [panels, rows, 16] or None


class CSR(PackedWeight):
    """A sparse [rows, cols] weight matrix (rows = out_features, cols = in_features).

    Build with :meth:`from_dense` or :meth:`from_csr` (which validates untrusted arrays).
    """

    __slots__ = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, bitmask: Union[bool, str] = "auto") -> "CSR":
        """Pack a dense 2-D weight; exact zeros are dropped. The result lives on the weight's device."""
        device = weight.device if isinstance(weight, torch.Tensor) else None
        weight = cls._checked_dense(weight)
        nonzero = weight != 0
        mask_bytes = pack_bits(torch.nn.functional.pad(nonzero, (0, -weight.shape[1] % 8)))
        csr = cls._pack_bitmask(weight[nonzero], mask_bytes, weight.shape[1], nonzero.sum(1), bitmask)
        return csr.to(device) if device.type == "cuda" else csr

    @classmethod
    def from_csr(cls, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 shape, bitmask: Union[bool, str] = "auto") -> "CSR":
        """Pack canonical CSR arrays after validating them (safe on untrusted data)."""
        rows, cols = cls.validate_arrays(indptr, indices, values, shape)
        counts = indptr[1:] - indptr[:-1]
        rows_idx = torch.repeat_interleave(torch.arange(rows, dtype=torch.int64), counts)
        return cls._pack((rows, cols), rows_idx, indices.to(torch.int64), values, bitmask)

    @classmethod
    def from_bitmask(cls, compressed: torch.Tensor, bitmask: torch.Tensor, shape,
                     row_offsets: Optional[torch.Tensor] = None, bitmask_kernel: Union[bool, str] = "auto") -> "CSR":
        """Pack canonical compressed-tensors ``sparse-bitmask`` arrays after validating them (safe
        on untrusted data). `row_offsets` is checked when given (it is redundant with the bitmask)."""
        rows, cols, row_counts = cls._checked_bitmask(compressed, bitmask, shape, row_offsets)
        return cls._pack_bitmask(compressed, bitmask, cols, row_counts, bitmask_kernel)

    @classmethod
    def validate_bitmask(cls, compressed, bitmask, shape, row_offsets=None) -> tuple[int, int]:
        """Prove ``sparse-bitmask`` arrays are well formed; returns (rows, cols) or raises FormatError."""
        rows, cols, _ = cls._checked_bitmask(compressed, bitmask, shape, row_offsets)
        return rows, cols

    @staticmethod
    def _checked_bitmask(compressed, bitmask, shape, row_offsets) -> tuple[int, int, torch.Tensor]:
        """validate_bitmask's checks; also returns the set bits per row (the packer needs them)."""
        rows, cols = canonical_shape(shape, _fail)
        arrays = [("compressed", compressed), ("bitmask", bitmask)]
        if row_offsets is not None:
            arrays.append(("row_offsets", row_offsets))
        for name, t in arrays:
            if not isinstance(t, torch.Tensor):
                _fail(name, f"must be a torch.Tensor, got {type(t).__name__}")
            if t.device.type != "cpu":
                _fail(name, f"must be on the CPU, got {t.device}")
        if compressed.dim() != 1 or compressed.dtype not in FLOAT_DTYPES:
            _fail("compressed", f"must be 1-D with dtype in {FLOAT_DTYPES}, got {compressed.dtype} "
                  f"of shape {tuple(compressed.shape)}")
        if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (rows, -(-cols // 8)):
            _fail("bitmask", f"must be uint8 of shape {(rows, -(-cols // 8))}, got {bitmask.dtype} "
                  f"of shape {tuple(bitmask.shape)}")
        if cols % 8 and rows:
            beyond = bitmask[:, -1].to(torch.int32) >> (cols % 8)
            if bool((beyond != 0).any()):
                r = int((beyond != 0).nonzero()[0, 0])
                _fail("bitmask", f"row {r} has bits set beyond column {cols - 1}")
        counts = popcount(bitmask) if rows else torch.zeros(0, dtype=torch.int64)
        nnz = int(counts.sum())
        if compressed.numel() != nnz:
            _fail("compressed", f"length must equal the {nnz} bits set in bitmask, got {compressed.numel()}")
        if row_offsets is not None:
            if row_offsets.dtype not in (torch.int32, torch.int64) or tuple(row_offsets.shape) != (rows,):
                _fail("row_offsets", f"must be int32/int64 of shape {(rows,)}, got {row_offsets.dtype} "
                      f"of shape {tuple(row_offsets.shape)}")
            expect = torch.cumsum(counts, 0) - counts
            bad = (row_offsets.to(torch.int64) != expect).nonzero()
            if bad.numel():
                r = int(bad[0, 0])
                _fail("row_offsets", f"row_offsets[{r}] = {int(row_offsets[r])}, but the bitmask puts "
                      f"row {r} at {int(expect[r])}")
        return rows, cols, counts

    @staticmethod
    def validate_arrays(indptr, indices, values, shape) -> tuple[int, int]:
        """Prove canonical CSR arrays are well formed; returns (rows, cols) or raises FormatError."""
        try:
            rows, cols = (int(s) for s in (shape.tolist() if isinstance(shape, torch.Tensor) else shape))
        except (TypeError, ValueError):
            _fail("shape", f"must be two integers, got {shape!r}")
        if rows < 0 or cols < 0:
            _fail("shape", f"must be non-negative, got {(rows, cols)}")
        for name, t in (("indptr", indptr), ("indices", indices), ("values", values)):
            if not isinstance(t, torch.Tensor):
                _fail(name, f"must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 1:
                _fail(name, f"must be 1-D, got shape {tuple(t.shape)}")
            if t.device.type != "cpu":
                _fail(name, f"must be on the CPU, got {t.device}")
        if indptr.dtype not in (torch.int32, torch.int64):
            _fail("indptr", f"dtype must be int32 or int64, got {indptr.dtype}")
        if indices.dtype not in (torch.uint16, torch.int16, torch.int32, torch.int64):
            _fail("indices", f"dtype must be an integer type, got {indices.dtype}")
        if values.dtype not in FLOAT_DTYPES:
            _fail("values", f"dtype must be one of {FLOAT_DTYPES}, got {values.dtype}")
        if indptr.numel() != rows + 1:
            _fail("indptr", f"length must be rows + 1 = {rows + 1}, got {indptr.numel()}")
        ip = indptr.to(torch.int64)
        nnz = indices.numel()
        if ip[0].item() != 0:
            _fail("indptr", f"must start at 0, got {ip[0].item()}")
        if rows and bool((ip[1:] < ip[:-1]).any()):
            bad = int((ip[1:] < ip[:-1]).nonzero()[0, 0])
            _fail("indptr", f"must be non-decreasing; indptr[{bad + 1}] < indptr[{bad}]")
        if ip[-1].item() != nnz:
            _fail("indptr", f"last entry must equal nnz = len(indices) = {nnz}, got {ip[-1].item()}")
        if values.numel() != nnz:
            _fail("values", f"length must equal len(indices) = {nnz}, got {values.numel()}")
        if nnz:
            idx = indices.to(torch.int64)
            if indices.dtype == torch.int16:  # int16 storage of uint16 data
                idx = idx & 0xFFFF
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= cols:
                bad = int(((idx < 0) | (idx >= cols)).nonzero()[0, 0])
                _fail("indices", f"indices[{bad}] = {int(idx[bad])} is outside [0, {cols})")
            row_of = torch.repeat_interleave(torch.arange(rows, dtype=torch.int64), ip[1:] - ip[:-1])
            key = row_of * cols + idx
            if nnz > 1 and bool((key[1:] <= key[:-1]).any()):
                bad = int((key[1:] <= key[:-1]).nonzero()[0, 0]) + 1
                _fail("indices", f"must be strictly increasing within each row; "
                      f"indices[{bad}] = {int(idx[bad])} in row {int(row_of[bad])} is not")
        return rows, cols

    @classmethod
    def _pack(cls, shape, rows_idx, cols_idx, values, bitmask) -> "CSR":
        """From (row, col, value) triples, row-major and column-sorted within a row."""
        rows, cols = int(shape[0]), int(shape[1])
        panels = -(-cols // PANEL_COLS)
        panel = cols_idx // PANEL_COLS
        local = cols_idx - panel * PANEL_COLS
        key = panel * rows + rows_idx  # (panel, row) cell; input is already column-sorted per row
        order = torch.argsort(key, stable=True)
        key = key[order]
        local = local[order]
        counts = torch.bincount(key, minlength=panels * rows).view(panels, rows)
        mask_bytes = None
        if cls._wants_bitmask(bitmask, values.numel(), rows, cols):
            bits = torch.zeros(panels * rows * PANEL_COLS, dtype=torch.bool)
            bits[key * PANEL_COLS + local] = True
            mask_bytes = pack_bits(bits.view(panels, rows, PANEL_COLS))
        nnz = int(values.numel())
        packed_values = torch.zeros(nnz + VALUES_PAD, dtype=values.dtype)
        packed_values[:nnz] = values[order]
        packed_idx = torch.zeros(nnz + VALUES_PAD, dtype=torch.uint8)
        packed_idx[:nnz] = local
        return cls._from_panels((rows, cols), packed_values, packed_idx, counts, mask_bytes)

    @classmethod
    def _pack_bitmask(cls, compressed: torch.Tensor, bitmask: torch.Tensor, cols: int, row_counts: torch.Tensor,
                      kernel_bitmask) -> "CSR":
        """From well-formed sparse-bitmask arrays (row-major values, [rows, ceil(cols / 8)] mask,
        set bits per row): no sort, one native pass over the non-zeros. A panel's 16 mask
        bytes of a row are exactly the kernel's 128-bit row mask."""
        rows = bitmask.shape[0]
        panels = -(-cols // PANEL_COLS)
        panel_bytes = PANEL_COLS // 8
        by_panel = torch.zeros(rows, panels * panel_bytes, dtype=torch.uint8)
        by_panel[:, :bitmask.shape[1]] = bitmask
        by_panel = by_panel.view(rows, panels, panel_bytes).transpose(0, 1).contiguous()  # [panels, rows, 16]
        counts = popcount(by_panel)  # [panels, rows]
        cell_offsets = (torch.cumsum(counts.flatten(), 0) - counts.flatten()).contiguous()
        row_offsets = (torch.cumsum(row_counts, 0) - row_counts).to(torch.int64).contiguous()
        nnz = int(compressed.numel())
        values = torch.zeros(nnz + VALUES_PAD, dtype=compressed.dtype)
        local = torch.zeros(nnz + VALUES_PAD, dtype=torch.uint8)
        compressed = compressed.contiguous()
        if nnz:
            _C.csr_pack_bitmask(rows, cols, compressed.element_size(), compressed.data_ptr(),
                                bitmask.contiguous().data_ptr(),
                                row_offsets.data_ptr(), cell_offsets.data_ptr(), values.data_ptr(),
                                local.data_ptr(), torch.get_num_threads())
        mask_bytes = by_panel if cls._wants_bitmask(kernel_bitmask, nnz, rows, cols) else None
        return cls._from_panels((rows, cols), values, local, counts, mask_bytes)

    @staticmethod
    def _wants_bitmask(bitmask, nnz: int, rows: int, cols: int) -> bool:
        if bitmask == "auto":
            return nnz / max(1, rows * cols) >= BITMASK_MIN_DENSITY
        return bool(bitmask)

    @classmethod
    def _from_panels(cls, shape, packed_values, packed_idx, counts, mask_bytes) -> "CSR":
        """The kernel layout from the non-zeros in panel order and their in-panel columns
        (both [nnz + VALUES_PAD], zero padded), the [panels, rows] counts and optional row masks."""
        rows, cols = shape
        nnz = int(packed_values.numel()) - VALUES_PAD
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
        packed = _Packed(packed_values, packed_idx, counts.to(torch.uint8).contiguous(),
                         block_offsets, block_nnz_prefix, mask_bytes)
        return cls((rows, cols), nnz, packed)

    # ------------------------------------------------------------------ views
    @property
    def has_bitmask(self) -> bool:
        """Whether the CPU layout carries the m=1 expand bitmask (never on CUDA)."""
        return not isinstance(self._p, CsrCudaPacked) and self._p.bitmask is not None

    def index_dtype(self) -> torch.dtype:
        """Smallest safe canonical index width for this matrix."""
        return torch.uint16 if self.cols <= 65536 else torch.int32

    def nbytes(self) -> int:
        """Bytes held by the packed form."""
        p = self._p
        if isinstance(p, CsrCudaPacked):
            return csr_cuda.nbytes(p)
        tensors = [p.values, p.local_idx, p.counts, p.block_offsets, p.block_nnz_prefix]
        if p.bitmask is not None:
            tensors.append(p.bitmask)
        return sum(t.numel() * t.element_size() for t in tensors)

    def bytes_read(self, m: int) -> int:
        """Weight bytes a csr_linear call with m tokens streams (the memory-bound cost at m=1)."""
        from .. import ops  # path choice lives with the op
        p = self._p
        if isinstance(p, CsrCudaPacked):
            if ops.csr_linear_path(self, m) == "dense_expand":
                return self.dense_nbytes()
            return csr_cuda.nbytes(p)
        read = self.nnz * p.values.element_size() + p.counts.numel() + p.block_offsets.numel() * 8
        if ops.csr_linear_path(self, m) == "rows_expand":
            return read + p.bitmask.numel()
        return read + self.nnz

    # ------------------------------------------------------------------ unpacking
    def _triples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, col, value) of every stored non-zero on the CPU, for either layout."""
        if isinstance(self._p, CsrCudaPacked):
            return csr_cuda.cells(self._p, self.rows, self.cols)
        row, col = self._cells()
        return row, col, self._p.values[: self.nnz]

    def _cells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) of every stored non-zero of the CPU layout, in packed order."""
        p = self._p
        panels = p.counts.shape[0]
        cell = torch.repeat_interleave(torch.arange(panels * self.rows, dtype=torch.int64),
                                       p.counts.flatten().to(torch.int64))
        row = cell % max(1, self.rows)
        col = (cell // max(1, self.rows)) * PANEL_COLS + p.local_idx[: self.nnz].to(torch.int64)
        return row, col

    def to_dense(self) -> torch.Tensor:
        """The dense [rows, cols] weight, on this weight's device."""
        if isinstance(self._p, CsrCudaPacked):
            return csr_cuda.dense_on_device(self._p, self.rows, self.cols)
        dense = torch.zeros(self.shape, dtype=self.dtype)
        row, col = self._cells()
        dense[row, col] = self._p.values[: self.nnz]
        return dense

    def to_csr_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canonical (indptr int64, indices uint16|int32, values), on the CPU."""
        row, col, values = self._triples()
        order = torch.argsort(row * max(1, self.cols) + col)
        indptr = torch.zeros(self.rows + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(torch.bincount(row, minlength=self.rows), 0)
        indices = col[order].to(torch.int32)
        if self.index_dtype() == torch.uint16:
            indices = indices.to(torch.uint16)
        return indptr, indices, values[order].clone()

    def to_bitmask(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canonical (compressed, bitmask, row_offsets, shape): the compressed-tensors
        ``sparse-bitmask`` layout, on the CPU."""
        row, col, values = self._triples()
        order = torch.argsort(row * max(1, self.cols) + col)
        width = -(-self.cols // 8) * 8
        bits = torch.zeros(self.rows * width, dtype=torch.bool)
        bits[row * width + col] = True
        counts = torch.bincount(row, minlength=self.rows)
        shape = torch.tensor([self.rows, self.cols], dtype=torch.int64)
        return (values[order].clone(), pack_bits(bits.view(self.rows, width)),
                torch.cumsum(counts, 0) - counts, shape)

    def to(self, target=None, *, dtype: Optional[torch.dtype] = None, device=None) -> "CSR":
        """Same matrix with values cast to another float dtype (zeros created by the cast are
        kept) and/or moved to another device, re-packed once for that device's kernels."""
        dtype, device = self._target(target, dtype, device)
        p = self._p
        if device != self.device:
            row, col, values = self._triples()
            values = values.to(dtype)
            if device.type == "cuda":
                return CSR(self.shape, self.nnz, csr_cuda.pack(self.rows, self.cols, row, col, values, device))
            return CSR._pack(self.shape, row, col, values, "auto")
        if dtype == self.dtype:
            return self
        if isinstance(p, CsrCudaPacked):
            return CSR(self.shape, self.nnz, CsrCudaPacked(p.values.to(dtype), p.index, p.seg_ptr, p.entries))
        return CSR(self.shape, self.nnz, _Packed(p.values.to(dtype), p.local_idx, p.counts,
                                                   p.block_offsets, p.block_nnz_prefix, p.bitmask))

    def validate(self) -> None:
        """Re-prove the packed invariants (e.g. after tensors were loaded or mutated)."""
        p = self._p
        if isinstance(p, CsrCudaPacked):
            if p.values.dtype not in FLOAT_DTYPES:
                _fail("values", f"dtype must be one of {FLOAT_DTYPES}, got {p.values.dtype}")
            csr_cuda.validate(p, self.rows, self.cols)
            if csr_cuda.cells(p, self.rows, self.cols)[0].numel() != self.nnz:
                _fail("index", f"stored entry count differs from nnz {self.nnz}")
            return
        panels = -(-self.cols // PANEL_COLS)
        row_blocks = -(-self.rows // ROW_BLOCK)
        expect = {
            "values": (self.nnz + VALUES_PAD,), "local_idx": (self.nnz + VALUES_PAD,),
            "counts": (panels, self.rows), "block_offsets": (panels, row_blocks + 1),
            "block_nnz_prefix": (row_blocks + 1,),
        }
        for name, shape in expect.items():
            t = getattr(p, name)
            if tuple(t.shape) != shape:
                _fail(name, f"shape must be {shape}, got {tuple(t.shape)}")
            if not t.is_contiguous() or t.device.type != "cpu":
                _fail(name, "must be a contiguous CPU tensor")
        for name, dt in (("local_idx", torch.uint8), ("counts", torch.uint8),
                         ("block_offsets", torch.int64), ("block_nnz_prefix", torch.int64)):
            if getattr(p, name).dtype != dt:
                _fail(name, f"dtype must be {dt}, got {getattr(p, name).dtype}")
        if p.values.dtype not in FLOAT_DTYPES:
            _fail("values", f"dtype must be one of {FLOAT_DTYPES}, got {p.values.dtype}")
        counts = p.counts.to(torch.int64)
        if counts.numel() and int(counts.max()) > PANEL_COLS:
            _fail("counts", f"a (panel, row) count exceeds {PANEL_COLS}")
        if int(counts.sum()) != self.nnz:
            _fail("counts", f"sum {int(counts.sum())} != nnz {self.nnz}")
        if self.nnz and int(p.local_idx[: self.nnz].max()) >= PANEL_COLS:
            _fail("local_idx", f"entries must be < {PANEL_COLS}")
        row, col = self._cells()
        cell_key = (col // PANEL_COLS) * max(1, self.rows) * PANEL_COLS + row * PANEL_COLS + col % PANEL_COLS
        if self.nnz > 1 and bool((cell_key[1:] <= cell_key[:-1]).any()):
            _fail("local_idx", "must be strictly increasing within each (panel, row)")
        rebuilt = CSR._pack(self.shape, row, col, p.values[: self.nnz], self.has_bitmask)
        for name in ("block_offsets", "block_nnz_prefix", "local_idx"):
            if not torch.equal(getattr(rebuilt._p, name), getattr(p, name)):
                _fail(name, "inconsistent with counts / local_idx")
        if p.bitmask is not None and not torch.equal(rebuilt._p.bitmask, p.bitmask):
            _fail("bitmask", "inconsistent with counts / local_idx")

    def __repr__(self) -> str:
        return (f"CSR(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, "
                f"dtype={self.dtype}, device={self.device}, bitmask={self.has_bitmask})")
