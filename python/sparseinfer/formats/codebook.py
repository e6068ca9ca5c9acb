"""codebook weights (parameter sharing, Deep Compression): every weight is a 4-bit index into a
table of 16 values per output channel or per group of input columns, run by the 4-bit lookup
kernels (formats/lut4.py).

``from_dense`` is exact when every row (or group) holds at most 16 distinct values (a model
clustered by ``sparseinfer.compress.cluster_weights``); otherwise it clusters each row (group)
with 1-D k-means (formats/kmeans.py), keeping exact zeros zero when the weight is pruned.

Canonical form (state_dict and checkpoints: sparseinfer's own layout, documented in the README):
``weight_packed`` int32 [rows, ceil(cols / 8)] (indices, eight per word, LSB first, as
pack-quantized stores 4-bit values), ``weight_codebook`` [rows, groups, 16] in the model dtype
and ``weight_shape`` int64 [2]. The float path multiplies the exact table values; the integer
path (act="dynamic") their 7-bit grid per table (error at most range / 254).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._native import FLOAT_DTYPES
from . import lut4
from .groups import group_size_for
from .lut4_weight import Lut4Weight


def _grouped(weight: torch.Tensor, groups: int, group_size: Optional[int]) -> torch.Tensor:
    """[rows, cols] -> [rows, groups, width]; a short last group is padded with its own first
    value (no new distinct value)."""
    rows, cols = weight.shape
    width = cols if group_size is None else group_size
    if groups * width == cols:
        return weight.contiguous().view(rows, groups, width)
    padded = torch.empty(rows, groups * width, dtype=weight.dtype)
    padded[:, :cols] = weight
    padded[:, cols:] = weight[:, (groups - 1) * width: (groups - 1) * width + 1]
    return padded.view(rows, groups, width)


def exact_codebook(values: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """values [n, width] -> (table [n, 16], indices uint8 [n, width]) reproducing every value bit
    for bit, if no row holds more than 16 distinct values; else None. Unused entries repeat the
    row's largest value."""
    n, width = values.shape
    if width == 0:
        return torch.zeros(n, lut4.ENTRIES, dtype=values.dtype), torch.zeros(n, 0, dtype=torch.uint8)
    ordered, order = values.sort(dim=-1)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rank = new.to(torch.int64).cumsum(-1) - 1  # entry of each sorted value
    if n and int(rank[:, -1].max()) >= lut4.ENTRIES:
        return None
    table = ordered[:, -1:].expand(n, lut4.ENTRIES).clone()
    table.scatter_(1, rank, ordered)
    indices = torch.empty(n, width, dtype=torch.int64)
    indices.scatter_(1, order, rank)
    return table, indices.to(torch.uint8)


class Codebook(Lut4Weight):
    """A [rows, cols] weight of 4-bit indices into 16-entry tables per output channel (or per
    group of input columns), for activations of float ``dtype``."""

    NAME = "Codebook"
    CANONICAL_KEYS = ("weight_packed", "weight_codebook", "weight_shape")

    @classmethod
    def from_dense(cls, weight: torch.Tensor, group_size: Optional[int] = None, iters: int = 20) -> "Codebook":
        """Pack a dense float weight [out, in]: exactly when each row (group) has <= 16 distinct
        values, else through 1-D k-means per row (group) with `iters` Lloyd iterations."""
        if isinstance(weight, torch.Tensor) and weight.device.type == "cuda":
            raise ValueError("Codebook weights run on the CPU for now; pass a CPU weight")
        weight = cls._checked_dense(weight)
        lut4.check_group_size(group_size)
        rows, cols = weight.shape
        cls._checked_cols(cols)
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("Codebook weights must be finite (NaN or inf has no place in a table)")
        if group_size is not None and group_size >= cols:
            group_size = None
        groups = lut4.num_groups(cols, group_size)
        grouped = _grouped(weight, groups, group_size)
        exact = exact_codebook(grouped.reshape(rows * groups, grouped.shape[-1]))
        if exact is not None:
            table, idx = exact
            idx = idx.reshape(rows, groups * grouped.shape[-1])[:, :cols]
        else:
            from .kmeans import kmeans_codebook
            # a pruned weight (>= 1% exact zeros) keeps its zeros: entry 0 of every table is 0
            keep_zeros = bool((weight == 0).float().mean() >= 0.01)
            table, idx = kmeans_codebook(weight.float(), k=lut4.ENTRIES, group_size=group_size, iters=iters,
                                         keep_zeros=keep_zeros)
            table = table.to(weight.dtype)
        return cls._pack(idx.contiguous(), table.reshape(rows, groups, lut4.ENTRIES), group_size, weight.dtype)

    @classmethod
    def from_indices(cls, indices: torch.Tensor, table: torch.Tensor, group_size: Optional[int] = None,
                     dtype: Optional[torch.dtype] = None) -> "Codebook":
        """Pack canonical arrays after validating them (safe on untrusted data): ``indices``
        uint8 [rows, cols] (0..15), ``table`` float [rows, groups, 16] (finite). ``dtype`` is
        the activation dtype (default: the table's dtype)."""
        cls._check_tensor("indices", indices, (torch.uint8,), 2)
        cls._check_group_size(group_size)
        rows, cols = indices.shape
        if cols > lut4.MAX_COLS:
            cls._fail("indices", f"in_features {cols} exceeds {lut4.MAX_COLS}")
        if indices.numel() and int(indices.max()) >= lut4.ENTRIES:
            cls._fail("indices", f"values must lie in [0, {lut4.ENTRIES - 1}]")
        cls._check_table(table, rows, cols, group_size)
        dtype = table.dtype if dtype is None else dtype
        cls._check_dtype(dtype)
        return cls._pack(indices.contiguous(), table, group_size, dtype)

    @classmethod
    def _check_table(cls, table, rows: int, cols: int, group_size: Optional[int]) -> None:
        cls._check_tensor("weight_codebook", table, FLOAT_DTYPES, 3)
        groups = lut4.num_groups(cols, group_size)
        if tuple(table.shape) != (rows, groups, lut4.ENTRIES):
            cls._fail("weight_codebook", f"shape must be {(rows, groups, lut4.ENTRIES)} for a {rows}x{cols} "
                                         f"weight with group_size={group_size}, got {tuple(table.shape)}")
        if not bool(torch.isfinite(table).all()):
            cls._fail("weight_codebook", "values must be finite")

    @classmethod
    def from_canonical(cls, arrays: dict, group_size: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None) -> "Codebook":
        """From the canonical arrays by name (CANONICAL_KEYS); the table's group count decides
        the grouping (`group_size` is the first guess). Validated like from_indices."""
        rows, cols = cls._shape_of(arrays["weight_shape"])
        idx = cls._unpacked_indices(arrays["weight_packed"], rows, cols)
        table = arrays["weight_codebook"]
        if isinstance(table, torch.Tensor) and table.dim() == 3:
            group_size = group_size_for(cols, table.shape[1], group_size, cls._fail)
        return cls.from_indices(idx, table, group_size, dtype)

    def to_canonical(self) -> dict:
        return {"weight_packed": self._packed_indices(), "weight_codebook": self.table().to(self._dtype),
                "weight_shape": torch.tensor(list(self.shape), dtype=torch.int64)}

    @classmethod
    def _pack(cls, idx: torch.Tensor, table: torch.Tensor, group_size: Optional[int], dtype) -> "Codebook":
        rows, cols = idx.shape
        rows_p, _ = lut4.padded_dims(rows, cols)
        exact = table.float()
        levels, scale, offset = lut4.codebook_levels(exact)
        packed = lut4.Lut4CpuPacked(lut4.pack_indices(idx), lut4.blocked(scale, rows_p),
                                    offsets=lut4.blocked(offset, rows_p), levels=lut4.padded_rows(levels, rows_p),
                                    table=lut4.padded_rows(exact, rows_p))
        weight = cls((rows, cols), 0, packed, group_size, dtype)
        weight.nnz = int((weight.to_dense(torch.float32) != 0).sum()) if rows * cols else 0
        return weight

    # ------------------------------------------------------------------ views
    def table(self) -> torch.Tensor:
        """fp32 tables [rows, groups, 16] (the exact values)."""
        return self._p.table[: self.rows].contiguous()

    def to_dense(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The [rows, cols] weight table[index], in `dtype` (default self.dtype)."""
        dtype = self._dtype if dtype is None else dtype
        idx = lut4.by_group(self.indices().to(torch.int64), self.groups, self.group_size)
        w = torch.gather(self.table().to(torch.float64 if dtype == torch.float64 else torch.float32), 2, idx)
        return w.reshape(self.rows, self.groups * idx.shape[-1])[:, : self.cols].to(dtype).contiguous()

    def validate(self) -> None:
        self._validate_layout()
        if self._p.levels is None or self._p.table is None or self._p.offsets is None or self._p.zeros is not None:
            self._fail("table", "codebook weights need their levels, table and offsets (and no zeros)")
        self._check_table(self.table(), self.rows, self.cols, self.group_size)
        levels, scale, offset = lut4.codebook_levels(self._p.table)
        if not torch.equal(levels, self._p.levels):
            self._fail("levels", "do not match the table")

    def __repr__(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return f"Codebook(shape={self.shape}, {g}, dtype={self.dtype}, device={self.device})"
