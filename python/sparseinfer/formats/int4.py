"""int4 weights: uniform 4-bit quantization with per-group (or per-channel) scales, symmetric or
asymmetric, run by the 4-bit lookup kernels (formats/lut4.py; the table is the integers 0..15).

Quantization (``from_dense``), as compressed-tensors computes it for 4-bit weights:
symmetric: ``scale = max|w| / 7.5`` (rounded to the weight's dtype), ``q = clamp(round(w /
scale), -8, 7)``; asymmetric: the group's range [min(w, 0), max(w, 0)] over 15 steps, ``zero =
clamp(-8 - round(min / scale), -8, 7)``, ``q = clamp(round(w / scale) + zero, -8, 7)``.
Dequantized: ``w ~ (q - zero) * scale``.

Canonical form (state_dict; the compressed-tensors ``pack-quantized`` 4-bit arrays):
``weight_packed`` int32 [rows, ceil(cols / 8)] (q + 8, eight per word, LSB first),
``weight_scale`` [rows, groups] in the model dtype, ``weight_shape`` int64 [2] and
``weight_zero_point`` int8 [rows, groups] (zeros when symmetric; checkpoints store it only
for asymmetric weights, packed as compressed-tensors does).
Kernel form: index = q + 8, scale and zero + 8 (uint8) per row and group.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._native import FLOAT_DTYPES
from . import lut4
from .groups import group_size_for
from .lut4_weight import Lut4Weight

QMIN, QMAX = -8, 7


class Int4(Lut4Weight):
    """A 4-bit [rows, cols] weight (rows = out_features) with fp32 scales (and zero points) per
    output channel or per group of input columns, for activations of float ``dtype``.

    Build with :meth:`from_dense` (quantizes) or :meth:`from_quantized` (validates untrusted
    data). ``symmetric`` says whether every zero point is 0.
    """

    NAME = "Int4"
    CANONICAL_KEYS = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, group_size: Optional[int] = 128, symmetric: bool = True) -> "Int4":
        """Quantize a dense float weight [out, in] (see the module docstring). A group_size
        larger than in_features means per channel."""
        if isinstance(weight, torch.Tensor) and weight.device.type == "cuda":
            raise ValueError("Int4 weights run on the CPU for now; pass a CPU weight")
        weight = cls._checked_dense(weight)
        lut4.check_group_size(group_size)
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be True or False, got {symmetric!r}")
        rows, cols = weight.shape
        cls._checked_cols(cols)
        if group_size is not None and group_size >= cols:
            group_size = None
        groups = lut4.num_groups(cols, group_size)
        if cols == 0:
            return cls._pack(torch.zeros(rows, 0, dtype=torch.int8), torch.zeros(rows, 1),
                             torch.zeros(rows, 1, dtype=torch.int8), None, weight.dtype)
        w = lut4.by_group(weight.float(), groups, group_size)  # padding columns are 0: inside every range
        if symmetric:
            scale = torch.maximum(w.amax(-1).abs(), w.amin(-1).abs()) / 7.5
            zero = torch.zeros(rows, groups)
        else:
            lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
            scale = (hi - lo) / (QMAX - QMIN)
        scale = scale.to(weight.dtype).float()  # representable in the model dtype: lossless checkpoints
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        if not symmetric:
            zero = (QMIN - torch.round(lo / safe)).clamp(QMIN, QMAX)
        q = torch.round(w / safe.unsqueeze(-1)) + zero.unsqueeze(-1)
        q = q.nan_to_num_(0.0).clamp_(QMIN, QMAX).reshape(rows, groups * w.shape[-1])[:, :cols].to(torch.int8)
        return cls._pack(q, scale, zero.to(torch.int8), group_size, weight.dtype)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor] = None,
                       group_size: Optional[int] = None, dtype: Optional[torch.dtype] = None) -> "Int4":
        """Pack canonical values after validating them (safe on untrusted data): ``q`` int8
        [rows, cols] in -8..7, ``scale`` float [rows], [rows, 1] or [rows, groups], ``zero_point``
        integer [rows, groups] in -8..7 or None (symmetric). ``dtype`` is the activation dtype
        (default: the scale's dtype)."""
        cls._check_tensor("q", q, (torch.int8,), 2)
        cls._check_group_size(group_size)
        rows, cols = q.shape
        if cols > lut4.MAX_COLS:
            cls._fail("q", f"in_features {cols} exceeds {lut4.MAX_COLS}")
        if bool(((q < QMIN) | (q > QMAX)).any()):
            cls._fail("q", f"values must lie in [{QMIN}, {QMAX}]")
        scale = cls._checked_scale(scale, rows, cols, group_size)
        if zero_point is None:
            zero = torch.zeros(scale.shape, dtype=torch.int8)
        else:
            if not isinstance(zero_point, torch.Tensor) or zero_point.dtype.is_floating_point \
                    or zero_point.dtype == torch.bool or zero_point.numel() != scale.numel():
                cls._fail("weight_zero_point", f"must be an integer tensor with {scale.numel()} values "
                                               f"(one per row and group)")
            zero = zero_point.reshape(scale.shape)
            if bool(((zero < QMIN) | (zero > QMAX)).any()):
                cls._fail("weight_zero_point", f"values must lie in [{QMIN}, {QMAX}]")
            zero = zero.to(torch.int8)
        dtype = scale.dtype if dtype is None else dtype
        cls._check_dtype(dtype)
        return cls._pack(q, scale.float(), zero, group_size, dtype)

    @classmethod
    def _checked_scale(cls, scale, rows: int, cols: int, group_size: Optional[int]) -> torch.Tensor:
        if not isinstance(scale, torch.Tensor) or scale.device.type != "cpu":
            cls._fail("weight_scale", "must be a CPU torch.Tensor")
        if scale.dtype not in FLOAT_DTYPES:
            cls._fail("weight_scale", f"dtype must be one of {FLOAT_DTYPES}, got {scale.dtype}")
        groups = lut4.num_groups(cols, group_size)
        if scale.dim() == 1:
            scale = scale.unsqueeze(-1)
        if tuple(scale.shape) != (rows, groups):
            cls._fail("weight_scale", f"shape must be {(rows, groups)} for a {rows}x{cols} weight with "
                                      f"group_size={group_size}, got {tuple(scale.shape)}")
        bad = ~torch.isfinite(scale) | (scale < 0)
        if bool(bad.any()):
            r, g = (int(v) for v in bad.nonzero()[0])
            cls._fail("weight_scale", f"[{r}, {g}] is {float(scale[r, g])}; scales must be finite and >= 0")
        return scale

    @classmethod
    def from_canonical(cls, arrays: dict, group_size: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None) -> "Int4":
        """From the canonical arrays by name (CANONICAL_KEYS; ``weight_zero_point`` may be absent
        or None: symmetric); the number of scale columns decides the grouping (`group_size` is
        the first guess). Validated like from_quantized."""
        rows, cols = cls._shape_of(arrays["weight_shape"])
        idx = cls._unpacked_indices(arrays["weight_packed"], rows, cols)
        scale = arrays["weight_scale"]
        if isinstance(scale, torch.Tensor) and scale.dim() in (1, 2):
            groups = 1 if scale.dim() == 1 else scale.shape[-1]
            group_size = group_size_for(cols, groups, group_size, cls._fail)
        zero = arrays.get("weight_zero_point")
        if isinstance(zero, torch.Tensor) and not zero.dtype.is_floating_point and not bool(zero.any()):
            zero = None
        q = (idx.to(torch.int16) - 8).to(torch.int8)
        return cls.from_quantized(q, scale, zero, group_size, dtype)

    def to_canonical(self) -> dict:
        """The canonical arrays by name (CANONICAL_KEYS), on the CPU; scales in the model dtype."""
        return {"weight_packed": self._packed_indices(), "weight_scale": self.scale().to(self._dtype),
                "weight_shape": torch.tensor(list(self.shape), dtype=torch.int64),
                "weight_zero_point": self.zero_point()}

    @classmethod
    def _pack(cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: Optional[int],
              dtype) -> "Int4":
        rows, cols = q.shape
        rows_p, _ = lut4.padded_dims(rows, cols)
        nibbles = lut4.pack_indices((q.to(torch.int16) + 8).to(torch.uint8))
        zeros = (zero.to(torch.int16) + 8).to(torch.uint8)
        packed = lut4.Lut4CpuPacked(nibbles, lut4.blocked(scale.float(), rows_p), zeros=lut4.blocked(zeros, rows_p))
        width = cols if group_size is None else group_size
        zero_cols = zero.repeat_interleave(width, dim=1)[:, :cols] if rows * cols else zero
        scale_cols = scale.repeat_interleave(width, dim=1)[:, :cols] if rows * cols else scale
        nnz = int(((q != zero_cols) & (scale_cols > 0)).sum()) if rows * cols else 0
        return cls((rows, cols), nnz, packed, group_size, dtype)

    # ------------------------------------------------------------------ views
    @property
    def symmetric(self) -> bool:
        return not bool(self.zero_point().any())

    def scale(self) -> torch.Tensor:
        """fp32 scales [rows, groups]."""
        return lut4.unblocked(self._p.scales, self.rows)

    def zero_point(self) -> torch.Tensor:
        """int8 zero points [rows, groups] (-8..7; 0 when symmetric)."""
        return (lut4.unblocked(self._p.zeros, self.rows).to(torch.int16) - 8).to(torch.int8)

    def qweight(self) -> torch.Tensor:
        """int8 values [rows, cols] in -8..7."""
        return (self.indices().to(torch.int16) - 8).to(torch.int8)

    def to_dense(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The dequantized [rows, cols] weight (q - zero) * scale, in `dtype` (default self.dtype)."""
        dtype = self._dtype if dtype is None else dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        q = lut4.by_group(self.qweight().to(compute), self.groups, self.group_size)
        w = (q - self.zero_point().to(compute).unsqueeze(-1)) * self.scale().to(compute).unsqueeze(-1)
        return w.reshape(self.rows, self.groups * w.shape[-1])[:, : self.cols].to(dtype).contiguous()

    def validate(self) -> None:
        """Re-prove the packed invariants (e.g. after tensors were loaded or mutated)."""
        self._validate_layout()
        if self._p.levels is not None or self._p.table is not None or self._p.offsets is not None:
            self._fail("levels", "int4 weights have no tables or offsets")
        if self._p.zeros is None or int(self._p.zeros.max()) > 15:
            self._fail("zeros", "int4 weights need zero points in 0..15 (zero + 8)")
        rows_p, kp = lut4.padded_dims(self.rows, self.cols)
        idx = lut4.unpack_indices(self._p.nibbles, rows_p, kp)
        if bool(idx[self.rows:].any()) or bool(idx[:, self.cols:].any()):
            self._fail("nibbles", "padding rows/columns must hold index 0")
        self._checked_scale(self.scale(), self.rows, self.cols, self.group_size)

    def __repr__(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"Int4(shape={self.shape}, {g}, {kind}, dtype={self.dtype}, device={self.device})"
