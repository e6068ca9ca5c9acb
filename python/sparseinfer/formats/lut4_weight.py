"""What the 4-bit lookup formats (Int4, Codebook) share: the packed indices, activation dtype,
views, sizes and the checks of their common invariants."""
from __future__ import annotations

from typing import Optional

import torch

from .._native import FLOAT_DTYPES
from . import lut4
from .base import PackedWeight, canonical_shape
from .errors import FormatError

# act modes of lut4_linear and their codes in the native op (lut4_linear.h, Lut4Act)
ACTS = {"none": 0, "dynamic": 1}


def check_act(act) -> int:
    if act not in ACTS:
        raise ValueError(f"act must be one of {tuple(ACTS)}, got {act!r}")
    return ACTS[act]


class Lut4Weight(PackedWeight):
    """A [rows, cols] weight of 4-bit indices into per-(row, group) tables (see formats/lut4.py)."""

    __slots__ = ("group_size", "_dtype")
    NAME = "Lut4"

    def __init__(self, shape, nnz: int, packed: lut4.Lut4CpuPacked, group_size: Optional[int], dtype: torch.dtype):
        super().__init__(shape, nnz, packed)
        self.group_size = group_size
        self._dtype = dtype

    @classmethod
    def _fail(cls, name: str, message: str) -> None:
        raise FormatError(f"{cls.NAME} {name}: {message}", array=name, detail=message)

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype of the activations (and outputs) this weight multiplies."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._p.nibbles.device

    @property
    def groups(self) -> int:
        return self._p.scales.shape[1]

    @property
    def bits(self) -> int:
        return 4

    def dense_nbytes(self) -> int:
        return self.rows * self.cols * self._dtype.itemsize

    def nbytes(self) -> int:
        return self._p.nbytes()

    def indices(self) -> torch.Tensor:
        """Canonical uint8 indices [rows, cols] (0..15)."""
        return lut4.unpack_indices(self._p.nibbles, self.rows, self.cols)

    def to(self, target=None, *, dtype: Optional[torch.dtype] = None, device=None):
        """The same weight for activations of another float dtype (the packed data is shared).
        CPU only for now."""
        dtype, device = self._target(target, dtype, device)
        if device.type != "cpu":
            raise ValueError(f"{type(self).__name__} weights run on the CPU for now, not {device}")
        if dtype == self._dtype:
            return self
        return type(self)(self.shape, self.nnz, self._p, self.group_size, dtype)

    # ------------------------------------------------------------------ shared checks
    @staticmethod
    def _check_dtype(dtype) -> None:
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")

    @classmethod
    def _checked_cols(cls, cols: int) -> None:
        if cols > lut4.MAX_COLS:
            raise ValueError(f"in_features {cols} exceeds {lut4.MAX_COLS}, the most the int32 dot products hold")

    @classmethod
    def _check_tensor(cls, name: str, t, dtypes: tuple, dim: int) -> None:
        if not isinstance(t, torch.Tensor):
            cls._fail(name, f"must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            cls._fail(name, f"must be on the CPU, got {t.device}")
        if t.dtype not in dtypes or t.dim() != dim:
            cls._fail(name, f"must be a {dim}-D tensor of {' / '.join(map(str, dtypes))}, "
                            f"got {t.dtype} of shape {tuple(t.shape)}")

    @classmethod
    def _check_group_size(cls, group_size) -> None:
        try:
            lut4.check_group_size(group_size)
        except ValueError as exc:
            cls._fail("group_size", str(exc))

    @classmethod
    def _shape_of(cls, shape) -> tuple[int, int]:
        return canonical_shape(shape, cls._fail)

    @classmethod
    def _unpacked_indices(cls, packed, rows: int, cols: int) -> torch.Tensor:
        """Canonical int32 words [rows, ceil(cols / 8)] -> uint8 indices [rows, cols] (validated)."""
        cls._check_tensor("weight_packed", packed, (torch.int32,), 2)
        width = lut4.ceil_div(cols, 8)
        if packed.shape[0] != rows or packed.shape[1] != width:
            cls._fail("weight_packed", f"shape must be {(rows, width)} for a {rows}x{cols} weight, "
                                       f"got {tuple(packed.shape)}")
        return lut4.indices_from_words(packed, cols)

    def _packed_indices(self) -> torch.Tensor:
        return lut4.words_from_indices(self.indices())

    def _validate_layout(self) -> None:
        p = self._p
        rows_p, kp = lut4.padded_dims(self.rows, self.cols)
        groups = lut4.num_groups(self.cols, self.group_size)
        cells = (rows_p // lut4.ROW_BLOCK, groups, lut4.ROW_BLOCK)
        specs = [("nibbles", p.nibbles, torch.uint8, (rows_p // lut4.ROW_BLOCK, kp // lut4.CHUNK, lut4.ROW_BLOCK, 32)),
                 ("scales", p.scales, torch.float32, cells)]
        if p.zeros is not None:
            specs.append(("zeros", p.zeros, torch.uint8, cells))
        if p.offsets is not None:
            specs.append(("offsets", p.offsets, torch.float32, cells))
        if p.levels is not None:
            specs.append(("levels", p.levels, torch.uint8, (rows_p, groups, lut4.ENTRIES)))
        if p.table is not None:
            specs.append(("table", p.table, torch.float32, (rows_p, groups, lut4.ENTRIES)))
        for name, t, dt, shape in specs:
            if t.dtype != dt or tuple(t.shape) != shape or not t.is_contiguous() or t.device.type != "cpu":
                self._fail(name, f"must be a contiguous CPU {dt} tensor of shape {shape}, got {t.dtype} "
                                 f"of shape {tuple(t.shape)}")
        for name in ("scales", "offsets", "table"):
            t = getattr(p, name)
            if t is not None and not bool(torch.isfinite(t).all()):
                self._fail(name, "must be finite")
        if p.levels is not None and (int(p.levels.max()) if p.levels.numel() else 0) > lut4.LEVEL_MAX:
            self._fail("levels", f"must be at most {lut4.LEVEL_MAX}")
