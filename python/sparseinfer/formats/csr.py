"""Unstructured sparse (CSR) weights, packed once for the kernels.

Canonical forms: checkpoints hold the compressed-tensors ``sparse-bitmask`` layout
(``to_bitmask`` / ``from_bitmask``: ``compressed`` [nnz] row-major, ``bitmask`` uint8
[rows, ceil(cols / 8)] little-endian per row, ``row_offsets`` int64 [rows], ``shape`` int64 [2]).
Plain CSR arrays are also accepted and produced (``from_csr`` / ``to_csr_arrays``): ``indptr``
int64 [rows + 1], ``indices`` [nnz] in the smallest safe width (uint16 when cols <= 65536, else
int32), ``values`` [nnz] fp32/bf16/fp16, row-major and sorted by column within a row.

Kernel form (what this object stores): the CPU layout (formats/csr_cpu.py) or, after
``.to("cuda")``, the GPU kernels' layout (formats/csr_cuda.py). Both answer the same methods
(triples, canonical_bitmask, to_dense, nbytes, with_dtype, validate), so nothing here asks which
one it holds. The canonical arrays are rebuilt from the layout on demand, so the values are held
once. Packing and unpacking on the CPU are vectorised (numpy bit packing and compaction, the
native bitmask packer, no sort): they run at a few passes over the weight (issue #17).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .._native import FLOAT_DTYPES
from . import csr_cpu, csr_cuda
from . import host
from .base import PackedWeight, canonical_shape
from .bits import pack_bits_np, popcount, popcount_np
from .csr_cpu import BITMASK_MIN_DENSITY, bitmask_min_density  # noqa: F401 (re-exported: the documented crossovers)
from .errors import FormatError


def _fail(name: str, message: str) -> None:
    raise FormatError(f"CSR {name}: {message}", array=name, detail=message)


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
        rows, cols = weight.shape
        # numpy: the zero test, bit packing and compaction each in one native pass
        dense = host.as_numpy(weight)
        keep = host.nonzero(dense, weight.dtype)
        mask_bytes = pack_bits_np(keep)  # [rows, ceil(cols / 8)]
        compressed = host.from_numpy(host.compact(dense, keep), weight.dtype)
        packed = csr_cpu.pack_bitmask(compressed, torch.from_numpy(mask_bytes), cols,
                                      torch.from_numpy(popcount_np(mask_bytes).reshape(rows)), bitmask)
        csr = cls((rows, cols), compressed.numel(), packed)
        return csr.to(device) if device.type == "cuda" else csr

    @classmethod
    def from_csr(cls, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 shape, bitmask: Union[bool, str] = "auto") -> "CSR":
        """Pack canonical CSR arrays after validating them (safe on untrusted data)."""
        rows, cols = cls.validate_arrays(indptr, indices, values, shape)
        counts = indptr[1:] - indptr[:-1]
        rows_idx = torch.repeat_interleave(torch.arange(rows, dtype=torch.int64), counts)
        packed = csr_cpu.pack_triples(rows, cols, rows_idx, indices.to(torch.int64), values, bitmask)
        return cls((rows, cols), values.numel(), packed)

    @classmethod
    def from_bitmask(cls, compressed: torch.Tensor, bitmask: torch.Tensor, shape,
                     row_offsets: Optional[torch.Tensor] = None, bitmask_kernel: Union[bool, str] = "auto") -> "CSR":
        """Pack canonical compressed-tensors ``sparse-bitmask`` arrays after validating them (safe
        on untrusted data). `row_offsets` is checked when given (it is redundant with the bitmask)."""
        rows, cols, row_counts = cls._checked_bitmask(compressed, bitmask, shape, row_offsets)
        return cls((rows, cols), compressed.numel(),
                   csr_cpu.pack_bitmask(compressed, bitmask, cols, row_counts, bitmask_kernel))

    # The canonical (checkpoint / state_dict) arrays by name: the sparse-bitmask layout.
    CANONICAL_KEYS = ("shape", "compressed", "bitmask", "row_offsets")

    @classmethod
    def from_canonical(cls, arrays: dict) -> "CSR":
        """From canonical arrays by name (``row_offsets`` optional); validated like from_bitmask."""
        return cls.from_bitmask(arrays["compressed"], arrays["bitmask"], arrays["shape"], arrays.get("row_offsets"))

    def to_canonical(self) -> dict:
        """The canonical arrays by name (CANONICAL_KEYS), on the CPU."""
        compressed, bitmask, row_offsets, shape = self.to_bitmask()
        return {"shape": shape, "compressed": compressed, "bitmask": bitmask, "row_offsets": row_offsets}

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
        rows, cols = canonical_shape(shape, _fail)
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

    # ------------------------------------------------------------------ views
    @property
    def has_bitmask(self) -> bool:
        """Whether the CPU layout carries the m=1 expand bitmask (never on CUDA)."""
        return self._p.has_bitmask

    def index_dtype(self) -> torch.dtype:
        """Smallest safe canonical index width for this matrix."""
        return torch.uint16 if self.cols <= 65536 else torch.int32

    def nbytes(self) -> int:
        """Bytes held by the packed form."""
        return self._p.nbytes()

    # ------------------------------------------------------------------ unpacking
    def _triples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, col, value) of every stored non-zero on the CPU."""
        return self._p.triples(self.rows, self.cols, self.nnz)

    def to_dense(self) -> torch.Tensor:
        """The dense [rows, cols] weight, on this weight's device."""
        return self._p.to_dense(self.rows, self.cols, self.nnz)

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
        return self._p.canonical_bitmask(self.rows, self.cols, self.nnz)

    def to(self, target=None, *, dtype: Optional[torch.dtype] = None, device=None) -> "CSR":
        """Same matrix with values cast to another float dtype (zeros created by the cast are
        kept) and/or moved to another device, re-packed once for that device's kernels."""
        dtype, device = self._target(target, dtype, device)
        if device != self.device:
            row, col, values = self._triples()
            values = values.to(dtype)
            if device.type == "cuda":
                return CSR(self.shape, self.nnz, csr_cuda.pack(self.rows, self.cols, row, col, values, device))
            return CSR(self.shape, self.nnz, csr_cpu.pack_triples(self.rows, self.cols, row, col, values, "auto"))
        if dtype == self.dtype:
            return self
        return CSR(self.shape, self.nnz, self._p.with_dtype(dtype))

    def validate(self) -> None:
        """Re-prove the packed invariants (e.g. after tensors were loaded or mutated)."""
        self._p.validate(self.rows, self.cols, self.nnz)

    def __repr__(self) -> str:
        return (f"CSR(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, "
                f"dtype={self.dtype}, device={self.device}, bitmask={self.has_bitmask})")
