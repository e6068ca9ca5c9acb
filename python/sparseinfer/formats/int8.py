"""int8 weights: symmetric quantization with per-output-channel or per-group scales, packed once
for the CPU kernels.

Quantization (``from_dense``): for every row r (and group g of ``group_size`` consecutive input
columns, or the whole row), ``scale = max|w| / 127`` rounded to the weight's dtype (so a
checkpoint storing scales in the model dtype, as compressed-tensors does, is lossless) and
``q = clamp(round(w / scale), -127, 127)``; a group of zeros gets scale 0. Dequantized:
``w ~ q * scale``, error at most scale / 2 per weight. Loaded weights (``from_quantized``) may
use the full range -128..127.

Canonical form (checkpoints; the compressed-tensors ``int-quantized`` layout): ``qweight`` int8
[rows, cols] and ``scale`` [rows, groups] (groups = 1 per channel, else ceil(cols / group_size)).

Kernel form (see csrc/include/sparseinfer/int8_linear.h): rows padded to blocks of 16 and columns
to blocks of 64; ``qweight`` int8 [rows_p/16, kp/4, 16, 4] (every 4 input columns of 16 rows in
one 64-byte line, a VNNI operand and an AMX tile row); ``wsum`` int32 [rows_p/16, groups, 16]
(row sums per group, for the u8 x s8 compensation) and ``scales`` fp32 [rows_p/16, groups, 16].
The object also carries the float dtype of the activations it multiplies (``dtype``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .._native import _C, FLOAT_DTYPES
from . import host
from .base import PackedWeight
from .errors import FormatError
from .groups import check_group_size, group_size_for
from .groups import by_group as _by_group, ceil_div as _ceil, num_groups as _groups

ROW_BLOCK = _C.build_info()["int8_row_block"]
K_BLOCK = _C.build_info()["int8_k_block"]
MAX_COLS = _C.build_info()["int8_max_cols"]
QMAX = 127


def _fail(name: str, message: str) -> None:
    raise FormatError(f"Int8 {name}: {message}", array=name, detail=message)


# Activation modes of int8_linear and their codes in the native op (int8_linear.h, Int8Act).
ACTS = {"none": 0, "dynamic": 1}


def check_act(act) -> int:
    """The native code of an activation mode; ValueError for anything but "none" / "dynamic"."""
    if act not in ACTS:
        raise ValueError(f"act must be one of {tuple(ACTS)}, got {act!r}")
    return ACTS[act]


def _blocked(t: torch.Tensor, rows_p: int) -> torch.Tensor:
    """[rows, groups] -> [rows_p/16, groups, 16] (padding rows zero)."""
    padded = torch.zeros(rows_p, t.shape[1], dtype=t.dtype)
    padded[: t.shape[0]] = t
    return padded.view(rows_p // ROW_BLOCK, ROW_BLOCK, t.shape[1]).transpose(1, 2).contiguous()


def _to_layout(q: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int8 [rows_p, kp] (contiguous, padded) -> the kernel's [rows_p/16, kp/4, 16, 4] (into
    `out` if given): moved as int32 words (4 columns each), a quarter of the elements of an int8
    transpose."""
    rows_p, kp = q.shape
    if out is None:
        out = host.empty((rows_p // ROW_BLOCK, kp // 4, ROW_BLOCK, 4), torch.int8)
    if not q.numel():
        return out
    if q.storage_offset() % 4:  # int32 words must start on a word of the storage
        q = q.clone()
    words = q.view(torch.int32).view(rows_p // ROW_BLOCK, ROW_BLOCK, kp // 4)
    out.view(torch.int32).view(rows_p // ROW_BLOCK, kp // 4, ROW_BLOCK).copy_(words.transpose(1, 2))
    return out


def _from_layout(qweight: torch.Tensor) -> torch.Tensor:
    """Inverse of _to_layout: [rows_p/16, kp/4, 16, 4] -> int8 [rows_p, kp]."""
    rb, kq = qweight.shape[0], qweight.shape[1]
    out = host.empty((rb * ROW_BLOCK, kq * 4), torch.int8)
    if not out.numel():
        return out
    qweight = qweight.contiguous() if qweight.storage_offset() % 4 == 0 else qweight.clone()
    words = qweight.view(torch.int32).view(rb, kq, ROW_BLOCK)
    out.view(torch.int32).view(rb, ROW_BLOCK, kq).copy_(words.transpose(1, 2))
    return out


_CHUNK_BYTES = 4 << 20  # fp32 scratch per block of rows: stays in cache, reused block after block


def _quantize(weight: torch.Tensor, safe: torch.Tensor, width: int, groups: int, non_finite: bool):
    """round(w / scale) clamped to +-127, straight into the kernel layout, a block of rows at a
    time through one small fp32 scratch (the weight is read once, nothing weight-sized is
    allocated but the int8 layout). Returns (qweight, row sums int32 [rows, groups], non-zeros)."""
    rows, cols = weight.shape
    full = (cols // width) * width if width else 0
    rows_p, kp = _ceil(rows, ROW_BLOCK) * ROW_BLOCK, _ceil(cols, K_BLOCK) * K_BLOCK
    qweight = host.empty((rows_p // ROW_BLOCK, kp // 4, ROW_BLOCK, 4), torch.int8)
    wsum = torch.empty(rows, groups, dtype=torch.int32)
    step = max(ROW_BLOCK, _CHUNK_BYTES // (4 * max(1, kp, groups * width)) // ROW_BLOCK * ROW_BLOCK)
    scratch = torch.zeros(min(step, rows_p), max(kp, groups * width))  # columns >= cols stay zero
    q8 = torch.empty(min(step, rows_p), kp, dtype=torch.int8)
    nnz = 0
    for r0 in range(0, rows_p, step):
        n, real = min(step, rows_p - r0), max(0, min(step, rows - r0))
        buf = scratch[:n]
        buf[real:] = 0  # padding rows (the last block only)
        if full:  # a 16-bit weight is promoted to fp32 on the fly: the same values as weight.float()
            torch.div(weight[r0:r0 + real, :full].view(real, full // width, width),
                      safe[r0:r0 + real, : full // width].unsqueeze(-1),
                      out=buf[:real, :full].view(real, full // width, width))
        if full < cols:
            torch.div(weight[r0:r0 + real, full:], safe[r0:r0 + real, -1:], out=buf[:real, full:cols])
        q = buf[:real, :cols]
        q.round_().clamp_(-QMAX, QMAX)
        if non_finite:  # NaN / inf weights: NaN quotients become 0, as the float -> int8 conversion
            q.nan_to_num_(0.0)  # makes them on x86
        wsum[r0:r0 + real] = buf[:real, : groups * width].view(real, groups, width).sum(-1)  # exact: < 2^24
        q8[:n].copy_(buf[:, :kp])
        nnz += host.count_nonzero(q8[:n])  # the int8 copy: a quarter of the bytes (padding is zero)
        _to_layout(q8[:n], qweight[r0 // ROW_BLOCK:(r0 + n) // ROW_BLOCK])
    return qweight, wsum, nnz


@dataclass(frozen=True)
class Int8CpuPacked:
    qweight: torch.Tensor  # int8 [rows_p/16, kp/4, 16, 4]
    wsum: torch.Tensor     # int32 [rows_p/16, groups, 16]
    scales: torch.Tensor   # fp32 [rows_p/16, groups, 16]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.wsum, self.scales))

    def bytes_read(self, nnz: int, path: str) -> int:
        """Weight bytes a call streams: the whole layout on every path."""
        return self.nbytes()


class Int8(PackedWeight):
    """A symmetric int8 [rows, cols] weight (rows = out_features) with fp32 scales per output
    channel or per group of input columns, for activations of float ``dtype``.

    Build with :meth:`from_dense` (quantizes) or :meth:`from_quantized` (validates untrusted
    int8 data and scales).
    """

    __slots__ = ("group_size", "_dtype")

    def __init__(self, shape, nnz: int, packed: Int8CpuPacked, group_size: Optional[int], dtype: torch.dtype):
        super().__init__(shape, nnz, packed)
        self.group_size = group_size
        self._dtype = dtype

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, group_size: Optional[int] = None) -> "Int8":
        """Quantize a dense float weight [out, in] (see the module docstring); activations will
        be expected in the weight's dtype (change with ``.to(dtype)``)."""
        if isinstance(weight, torch.Tensor) and weight.device.type == "cuda":
            raise ValueError("Int8 weights run on the CPU for now; pass a CPU weight")
        weight = cls._checked_dense(weight)
        check_group_size(group_size)
        rows, cols = weight.shape
        cls._check_cols(cols)
        groups = _groups(cols, group_size)
        width = cols if group_size is None else group_size
        full = (cols // width) * width if width else 0  # columns in whole groups
        scale = torch.zeros(rows, groups)
        if full:  # max |w| per group, from two reductions without an |w| temporary
            whole = weight[:, :full].view(rows, full // width, width)
            scale[:, : full // width] = torch.maximum(whole.amax(-1).abs(), whole.amin(-1).abs())
        if full < cols:  # a last, shorter group
            tail = weight[:, full:]
            scale[:, -1] = torch.maximum(tail.amax(-1).abs(), tail.amin(-1).abs())
        scale = (scale / QMAX).to(weight.dtype).float()  # representable in the model dtype: lossless checkpoints
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        qweight, wsum, nnz = _quantize(weight, safe, width, groups, not bool(torch.isfinite(scale).all()))
        rows_p = qweight.shape[0] * ROW_BLOCK
        packed = Int8CpuPacked(qweight, _blocked(wsum, rows_p), _blocked(scale, rows_p))
        return cls((rows, cols), nnz, packed, group_size, weight.dtype)

    @classmethod
    def from_quantized(cls, qweight: torch.Tensor, scale: torch.Tensor, group_size: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None) -> "Int8":
        """Pack canonical arrays after validating them (safe on untrusted data): ``qweight`` int8
        [rows, cols], ``scale`` float [rows], [rows, 1] or [rows, groups]. ``dtype`` is the
        activation dtype (default: the scale's dtype)."""
        scale = cls.validate_quantized(qweight, scale, group_size)
        dtype = scale.dtype if dtype is None else dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
        return cls._pack(qweight, scale.float(), group_size, dtype)

    # The canonical (checkpoint / state_dict) arrays by name: the int-quantized layout.
    CANONICAL_KEYS = ("weight", "weight_scale")

    @classmethod
    def from_canonical(cls, arrays: dict, group_size: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None) -> "Int8":
        """From canonical arrays by name: ``weight`` int8 [rows, cols] and ``weight_scale``
        [rows] / [rows, groups]. `group_size` is used when it matches the number of groups, else
        the smallest multiple of 32 that gives that many groups is assumed; validated like
        from_quantized."""
        qweight, scale = arrays["weight"], arrays["weight_scale"]
        if isinstance(qweight, torch.Tensor) and isinstance(scale, torch.Tensor) and qweight.dim() == 2:
            group_size = cls._group_size_for(qweight.shape[-1], 1 if scale.dim() == 1 else scale.shape[-1],
                                             group_size)
        return cls.from_quantized(qweight, scale, group_size, dtype=dtype)

    @staticmethod
    def _group_size_for(cols: int, groups: int, hint: Optional[int]) -> Optional[int]:
        return group_size_for(cols, groups, hint, _fail, "scale")

    def to_canonical(self) -> dict:
        """The canonical arrays by name (CANONICAL_KEYS), on the CPU; scales in the model dtype."""
        return {"weight": self.qweight(), "weight_scale": self.scale().to(self._dtype)}

    @staticmethod
    def _check_cols(cols: int) -> None:
        if cols > MAX_COLS:
            raise ValueError(f"in_features {cols} exceeds {MAX_COLS}, the most the int32 dot "
                             "products hold without overflow")

    @classmethod
    def validate_quantized(cls, qweight, scale, group_size: Optional[int], max_cols: int = MAX_COLS) -> torch.Tensor:
        """Prove canonical arrays are well formed (at most `max_cols` columns: the caller's
        kernels' limit); returns scale as [rows, groups] or raises FormatError."""
        for name, t in (("qweight", qweight), ("scale", scale)):
            if not isinstance(t, torch.Tensor):
                _fail(name, f"must be a torch.Tensor, got {type(t).__name__}")
            if t.device.type != "cpu":
                _fail(name, f"must be on the CPU, got {t.device}")
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            _fail("qweight", f"must be a 2-D int8 tensor, got {qweight.dtype} of shape {tuple(qweight.shape)}")
        try:
            check_group_size(group_size)
        except ValueError as exc:
            _fail("group_size", str(exc))
        rows, cols = qweight.shape
        if cols > max_cols:
            _fail("qweight", f"in_features {cols} exceeds {max_cols} (int32 accumulation limit)")
        groups = _groups(cols, group_size)
        if scale.dtype not in FLOAT_DTYPES:
            _fail("scale", f"dtype must be one of {FLOAT_DTYPES}, got {scale.dtype}")
        if scale.dim() == 1:
            scale = scale.unsqueeze(-1)
        if tuple(scale.shape) != (rows, groups):
            _fail("scale", f"shape must be {(rows, groups)} (or {(rows,)} per channel) for a "
                  f"{rows}x{cols} weight with group_size={group_size}, got {tuple(scale.shape)}")
        bad = ~torch.isfinite(scale) | (scale < 0)
        if bool(bad.any()):
            r, g = (int(v) for v in bad.nonzero()[0])
            _fail("scale", f"row {r}, group {g} is {float(scale[r, g])}; scales must be finite and >= 0")
        return scale

    @classmethod
    def _pack(cls, q: torch.Tensor, scale: torch.Tensor, group_size: Optional[int], dtype) -> "Int8":
        """q int8 [rows, cols], scale fp32 [rows, groups] -> kernel form."""
        rows, cols = q.shape
        groups = scale.shape[1]
        rows_p, kp = _ceil(rows, ROW_BLOCK) * ROW_BLOCK, _ceil(cols, K_BLOCK) * K_BLOCK
        padded = q.contiguous()
        if (rows_p, kp) != (rows, cols):
            padded = host.zeros((rows_p, kp), torch.int8)
            padded[:rows, :cols] = q
        qweight = _to_layout(padded)
        # numpy sums int8 into int32 an order of magnitude faster than torch (exact: |sums| < 2^24)
        wsum = torch.from_numpy(_by_group(q, groups, group_size).numpy().sum(-1, dtype=np.int32))
        packed = Int8CpuPacked(qweight, _blocked(wsum, rows_p), _blocked(scale.float().contiguous(), rows_p))
        return cls((rows, cols), host.count_nonzero(q), packed, group_size, dtype)

    # ------------------------------------------------------------------ views
    @property
    def dtype(self) -> torch.dtype:
        """The float dtype of the activations (and outputs) this weight multiplies."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._p.qweight.device

    @property
    def groups(self) -> int:
        return self._p.scales.shape[1]

    @property
    def bits(self) -> int:
        return 8

    def dense_nbytes(self) -> int:
        return self.rows * self.cols * self._dtype.itemsize

    def nbytes(self) -> int:
        """Bytes held by the packed form (int8 weights, scales and row sums)."""
        return self._p.nbytes()

    def qweight(self) -> torch.Tensor:
        """Canonical int8 [rows, cols]."""
        q = _from_layout(self._p.qweight)
        return q if tuple(q.shape) == self.shape else q[: self.rows, : self.cols].contiguous()

    def scale(self) -> torch.Tensor:
        """Canonical fp32 scales [rows, groups]."""
        s = self._p.scales
        return s.transpose(1, 2).reshape(-1, s.shape[1])[: self.rows].contiguous()

    def to_dense(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The dequantized [rows, cols] weight, q * scale, in `dtype` (default: self.dtype)."""
        dtype = self._dtype if dtype is None else dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        q = _by_group(self.qweight().to(compute), self.groups, self.group_size)
        w = (q * self.scale().to(compute).unsqueeze(-1)).view(self.rows, -1)[:, : self.cols]
        return w.to(dtype).contiguous()

    def to(self, target=None, *, dtype: Optional[torch.dtype] = None, device=None) -> "Int8":
        """The same quantized weight for activations of another float dtype (the int8 data and
        fp32 scales are unchanged). CPU only for now."""
        dtype, device = self._target(target, dtype, device)
        if device.type != "cpu":
            raise ValueError(f"Int8 weights run on the CPU for now, not {device} (CUDA int8 is "
                             "planned with the CUDA backend)")
        if dtype == self._dtype:
            return self
        return Int8(self.shape, self.nnz, self._p, self.group_size, dtype)

    def validate(self) -> None:
        """Re-prove the packed invariants (e.g. after tensors were loaded or mutated)."""
        p = self._p
        rows_p, kp = _ceil(self.rows, ROW_BLOCK) * ROW_BLOCK, _ceil(self.cols, K_BLOCK) * K_BLOCK
        groups = _groups(self.cols, self.group_size)
        for name, t, dt, shape in (("qweight", p.qweight, torch.int8, (rows_p // ROW_BLOCK, kp // 4, ROW_BLOCK, 4)),
                                   ("wsum", p.wsum, torch.int32, (rows_p // ROW_BLOCK, groups, ROW_BLOCK)),
                                   ("scales", p.scales, torch.float32, (rows_p // ROW_BLOCK, groups, ROW_BLOCK))):
            if t.dtype != dt or tuple(t.shape) != shape:
                _fail(name, f"must be {dt} of shape {shape}, got {t.dtype} of shape {tuple(t.shape)}")
            if not t.is_contiguous() or t.device.type != "cpu":
                _fail(name, "must be a contiguous CPU tensor")
        full = p.qweight.transpose(1, 2).reshape(rows_p, kp)
        outside = full.clone()
        outside[: self.rows, : self.cols] = 0
        if bool((outside != 0).any()):
            _fail("qweight", "padding rows/columns must hold zero")
        self.validate_quantized(self.qweight(), self.scale(), self.group_size)
        expected = _blocked(_by_group(self.qweight().to(torch.int32), groups, self.group_size).sum(-1, dtype=torch.int32), rows_p)
        if not torch.equal(expected, p.wsum):
            _fail("wsum", "row sums do not match the weights")
        if int((self.qweight() != 0).sum()) != self.nnz:
            _fail("qweight", f"non-zero count differs from nnz {self.nnz}")

    def __repr__(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return f"Int8(shape={self.shape}, {g}, dtype={self.dtype}, device={self.device})"
