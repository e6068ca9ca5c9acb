"""Sparse weights with int8 values: ``csr+int8`` (unstructured) and ``2:4+int8`` (2 of every 4
input columns), each with symmetric int8 values and fp32 scales per output channel or per group
of input columns, packed once for the sparse int8 kernels (formats/sparse_int8_layout.py).

Quantization (``from_dense``, a pruned float weight): per row (and group) ``scale = max|w| /
127`` rounded to the weight's dtype, ``q = clamp(round(w / scale), -127, 127)``, as the ``int8``
format does; pruned weights stay exactly zero, and a kept weight that rounds to 0 is dropped
(it adds nothing). ``from_quantized`` validates untrusted int8 data (any value -128..127) and
scales.

Canonical form (checkpoints): the compressed-tensors composite of a sparsity layout holding the
int8 values plus ``weight_scale`` [rows, groups]: ``shape``, ``compressed`` int8, ``bitmask``
(and ``row_offsets`` for csr+int8) exactly as the ``sparse-bitmask`` / ``sparse-24-bitmask``
float layouts store them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .._native import FLOAT_DTYPES
from . import sparse_int8_layout as layout
from .base import PackedWeight
from .csr import CSR
from .errors import FormatError
from .groups import by_group, check_group_size, group_size_for, num_groups
from .int8 import Int8, QMAX
from .sparse24 import Sparse24

MAX_COLS = layout.MAX_COLS


class SparseInt8(PackedWeight):
    """A pruned [rows, cols] weight with int8 values (see the module docstring); ``dtype`` is the
    float dtype of the activations it multiplies."""

    __slots__ = ("group_size", "_dtype")
    NAME = "SparseInt8"
    STRUCTURE = "unstructured"
    SPARSE_FORMAT: type = CSR  # the float format whose canonical layout ours mirrors

    def __init__(self, shape, nnz: int, packed: layout.SparseInt8Packed, group_size: Optional[int],
                 dtype: torch.dtype):
        super().__init__(shape, nnz, packed)
        self.group_size = group_size
        self._dtype = dtype

    @classmethod
    def _fail(cls, name: str, message: str) -> None:
        raise FormatError(f"{cls.NAME} {name}: {message}", array=name, detail=message)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, group_size: Optional[int] = None) -> "SparseInt8":
        """Quantize the kept (non-zero) values of a pruned float weight [out, in]."""
        weight = cls._checked_dense(weight)
        check_group_size(group_size)
        rows, cols = weight.shape
        cls._check_cols(cols)
        groups = num_groups(cols, group_size)
        grouped = by_group(weight.float(), groups, group_size)
        scale = (grouped.abs().amax(-1) / QMAX).to(weight.dtype).float() if cols else torch.zeros(rows, groups)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError("weight holds a NaN or an inf: it cannot be quantized")
        safe = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(-1)
        q = (grouped / safe).round_().clamp_(-QMAX, QMAX).to(torch.int8).reshape(rows, groups * grouped.shape[-1])[:, :cols]
        cls._check_pattern(q, "weight")
        return cls._pack(q, scale, group_size, weight.dtype)

    @classmethod
    def from_quantized(cls, qweight: torch.Tensor, scale: torch.Tensor, group_size: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None) -> "SparseInt8":
        """Pack validated arrays (safe on untrusted data): ``qweight`` int8 [rows, cols] with the
        pruned weights zero, ``scale`` float [rows], [rows, 1] or [rows, groups]. ``dtype`` is
        the activation dtype (default: the scale's)."""
        try:
            scale = Int8.validate_quantized(qweight, scale, group_size, max_cols=MAX_COLS)
        except FormatError as exc:
            cls._fail(exc.array, exc.detail)
        cls._check_cols(qweight.shape[1])
        dtype = scale.dtype if dtype is None else dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
        cls._check_pattern(qweight, "qweight")
        return cls._pack(qweight, scale.float(), group_size, dtype)

    @classmethod
    def _check_pattern(cls, q: torch.Tensor, name: str) -> None:
        """Unstructured: any pattern. Subclasses with a structure override this."""

    @classmethod
    def _check_cols(cls, cols: int) -> None:
        if cols > MAX_COLS:
            raise ValueError(f"in_features {cols} exceeds {MAX_COLS}, the most the int32 dot products hold")

    @classmethod
    def _pack(cls, q: torch.Tensor, scale: torch.Tensor, group_size: Optional[int], dtype) -> "SparseInt8":
        rows, cols = q.shape
        qn = q.contiguous().numpy()
        row, col = np.nonzero(qn)  # row-major: sorted by row, then column
        packed = layout.pack(rows, cols, row.astype(np.int64), col.astype(np.int64), qn[row, col],
                             scale.float().contiguous(), uniform=cls.STRUCTURE == "2:4")
        return cls((rows, cols), row.size, packed, group_size, dtype)

    # ------------------------------------------------------------------ canonical form
    @classmethod
    def canonical_keys(cls) -> tuple[str, ...]:
        return cls.SPARSE_FORMAT.CANONICAL_KEYS + ("weight_scale",)

    @classmethod
    def from_canonical(cls, arrays: dict, group_size: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None) -> "SparseInt8":
        """From canonical arrays by name (the sparsity layout with int8 ``compressed``, plus
        ``weight_scale``); everything is validated (untrusted data)."""
        compressed = arrays["compressed"]
        if not isinstance(compressed, torch.Tensor) or compressed.dtype != torch.int8:
            cls._fail("compressed", f"must be an int8 tensor, got {getattr(compressed, 'dtype', type(compressed).__name__)}")
        try:  # the float format proves the sparsity arrays; int8 values are exact in fp32
            sparse = cls.SPARSE_FORMAT.from_canonical(dict(arrays, compressed=compressed.float()))
        except FormatError as exc:
            cls._fail(exc.array, exc.detail)
        qweight = sparse.to_dense().to(torch.int8)
        scale = arrays["weight_scale"]
        if isinstance(scale, torch.Tensor) and scale.dim() in (1, 2):
            groups = 1 if scale.dim() == 1 else scale.shape[-1]
            group_size = group_size_for(qweight.shape[1], groups, group_size, cls._fail, "weight_scale")
        return cls.from_quantized(qweight, scale, group_size, dtype=dtype)

    def to_canonical(self) -> dict:
        """The canonical arrays by name, on the CPU; scales in the model dtype."""
        sparse = self.SPARSE_FORMAT.from_dense(self.qweight().float()).to_canonical()
        return dict(sparse, compressed=sparse["compressed"].to(torch.int8), weight_scale=self.scale().to(self._dtype))

    # ------------------------------------------------------------------ views
    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._p.values.device

    @property
    def groups(self) -> int:
        return self._p.scales.shape[1]

    @property
    def bits(self) -> int:
        return 8

    def dense_nbytes(self) -> int:
        return self.rows * self.cols * self._dtype.itemsize

    def nbytes(self) -> int:
        return self._p.nbytes()

    def qweight(self) -> torch.Tensor:
        """The int8 weights [rows, cols] (zero where pruned)."""
        row, col, value = layout.unpack(self._p, self.rows, self.cols)
        q = np.zeros((self.rows, self.cols), np.int8)
        q[row, col] = value
        return torch.from_numpy(q)

    def scale(self) -> torch.Tensor:
        """fp32 scales [rows, groups]."""
        return self._p.scales[: self.rows].clone()

    def to_dense(self) -> torch.Tensor:
        """The dequantized weight q * scale [rows, cols] in fp32."""
        q = self.qweight().float()
        s = self.scale()
        if self.group_size is None:
            return q * s
        grouped = by_group(q, self.groups, self.group_size) * s.unsqueeze(-1)
        return grouped.reshape(self.rows, -1)[:, : self.cols].contiguous()

    def to(self, target=None, *, dtype: Optional[torch.dtype] = None, device=None) -> "SparseInt8":
        """The same weight for activations of another float dtype (packed data shared); CPU only."""
        dtype, device = self._target(target, dtype, device)
        if device.type != "cpu":
            raise ValueError(f"{type(self).__name__} weights run on the CPU for now, not {device}")
        return self if dtype == self._dtype else type(self)(self.shape, self.nnz, self._p, self.group_size, dtype)

    def validate(self) -> None:
        """Re-prove the packed invariants (e.g. after the tensors were mutated)."""
        layout.prove(self._p, self.rows, self.cols, num_groups(self.cols, self.group_size))

    def __repr__(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, {g}, "
                f"dtype={self.dtype})")


class CsrInt8(SparseInt8):
    """Unstructured sparsity with int8 values (format ``csr+int8``)."""

    __slots__ = ()
    NAME = "CsrInt8"


class Sparse24Int8(SparseInt8):
    """2:4 sparsity with int8 values (format ``2:4+int8``): at most 2 non-zeros in every 4
    consecutive input columns."""

    __slots__ = ()
    NAME = "Sparse24Int8"
    STRUCTURE = "2:4"
    SPARSE_FORMAT = Sparse24

    @classmethod
    def _check_pattern(cls, q: torch.Tensor, name: str) -> None:
        rows, cols = q.shape
        groups = -(-cols // 4)
        kept = torch.zeros(rows, groups * 4, dtype=torch.int32)
        kept[:, :cols] = q != 0
        per_group = kept.view(rows, groups, 4).sum(-1)
        if rows and cols and int(per_group.max()) > 2:
            r, g = (int(v) for v in (per_group > 2).nonzero()[0])
            cls._fail(name, f"row {r}, columns {4 * g}..{min(cols, 4 * g + 4) - 1} hold more than 2 non-zeros (not 2:4)")
