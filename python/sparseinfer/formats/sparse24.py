"""2:4 semi-structured sparse weights, packed once for the CPU kernels.

2:4 means: in every group of 4 consecutive input columns of a row, at most 2 weights are
non-zero. Every group keeps exactly 2 *slots* (a zero value fills a slot where the group has
fewer non-zeros), so the storage is regular: half the values plus 2 bits of position per slot.

Canonical form (checkpoints; the compressed-tensors ``sparse-24-bitmask`` layout):
``compressed`` [rows, kept] in the weight dtype and ``bitmask`` uint8 [rows, ceil(cols / 8)]
(column c is bit c % 8 of byte c // 8), with exactly 2 bits set per group of 4, so
kept = cols / 2. Columns that are not a multiple of 4 are handled: the last, partial group
keeps min(2, cols % 4) slots, so kept = 2 * (cols // 4) + min(2, cols % 4). compressed-tensors
itself requires cols % 4 == 0; such files are identical in both.

Kernel form (what this object stores): the CPU layout (formats/sparse24_cpu.py) or, after
``.to("cuda")``, the sparse tensor-core layout (formats/sparse24_cuda.py). Both answer the same
methods (slots, to_dense, nbytes, with_dtype, validate_layout), so nothing here asks which one
it holds.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._native import FLOAT_DTYPES, SPARSE24_CHUNK_COLS
from . import sparse24_cpu, sparse24_cuda
from .base import PackedWeight, canonical_shape
from .bits import pack_bits, unpack_bits
from .errors import FormatError

_GROUP = 4
_KEPT = 2
_CHUNK_SLOTS = sparse24_cpu.CHUNK_SLOTS


def _fail(name: str, message: str) -> None:
    raise FormatError(f"Sparse24 {name}: {message}", array=name, detail=message)


def _chunks(cols: int) -> int:
    return -(-cols // SPARSE24_CHUNK_COLS)


def kept_per_row(cols: int) -> int:
    """Slots per row in the canonical layout: 2 per full group, min(2, rest) for a partial one."""
    return _KEPT * (cols // _GROUP) + min(_KEPT, cols % _GROUP)


def _padded(t: torch.Tensor, width: int, fill=0) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    out = torch.full((t.shape[0], width), fill, dtype=t.dtype)
    out[:, : t.shape[1]] = t
    return out


def _group_counts(mask: torch.Tensor) -> torch.Tensor:
    """bool [rows, cols] -> int [rows, ceil(cols / 4)]: True entries per group of 4 columns."""
    rows, cols = mask.shape
    groups = -(-cols // _GROUP)
    return _padded(mask, groups * _GROUP, False).view(rows, groups, _GROUP).sum(-1)


def _group_name(r: int, g: int, cols: int) -> str:
    return f"row {r}, columns {_GROUP * g}..{min(cols, _GROUP * g + _GROUP) - 1}"


class Not24Error(ValueError):
    """A dense weight is not 2:4 sparse; `problem` names the first offending group."""

    def __init__(self, problem: str):
        super().__init__(f"weight is not 2:4 sparse: {problem}. Prune it first with "
                         "sparseinfer.compress.prune_2_4(weight).")
        self.problem = problem


class Sparse24(PackedWeight):
    """A 2:4 sparse [rows, cols] weight (rows = out_features, cols = in_features).

    Build with :meth:`from_dense` (the weight must already be 2:4: see
    :func:`sparseinfer.compress.prune_2_4`) or :meth:`from_bitmask` (validates untrusted
    compressed-tensors data).
    """

    __slots__ = ()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def first_violation(weight: torch.Tensor) -> Optional[str]:
        """None if `weight` [rows, cols] is 2:4, else where it first is not (row-major order)."""
        count = _group_counts(weight != 0)
        bad = (count > _KEPT).nonzero()
        if not bad.numel():
            return None
        r, g = (int(v) for v in bad[0])
        return (f"{_group_name(r, g, weight.shape[1])} hold {int(count[r, g])} non-zeros (2:4 "
                f"allows at most 2 in every group of 4 consecutive input columns)")

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "Sparse24":
        """Pack a dense 2-D weight that is already 2:4; raises Not24Error (a ValueError) naming
        the first group with more than 2 non-zeros otherwise (prune first with
        sparseinfer.compress.prune_2_4)."""
        device = weight.device if isinstance(weight, torch.Tensor) else None
        weight = cls._checked_dense(weight)
        problem = cls.first_violation(weight)
        if problem is not None:
            raise Not24Error(problem)
        rows, cols = weight.shape
        width = _chunks(cols) * SPARSE24_CHUNK_COLS
        # Slots: non-zeros first, then real (not padding) columns, then the lowest column.
        pos = torch.arange(width) % _GROUP
        score = ((_padded(weight != 0, width, False).to(torch.int64) * 8)
                 + (torch.arange(width) < cols).to(torch.int64) * 4 + (3 - pos))
        top = score.view(rows, width // _GROUP, _GROUP).topk(_KEPT, dim=-1).indices
        kept = torch.zeros(rows, width // _GROUP, _GROUP, dtype=torch.bool)
        kept.scatter_(-1, top, True)
        packed = cls._pack(_padded(weight, width), kept.view(rows, width), cols)
        return packed.to(device) if device.type == "cuda" else packed

    @classmethod
    def from_bitmask(cls, compressed: torch.Tensor, bitmask: torch.Tensor, shape) -> "Sparse24":
        """Pack canonical (compressed-tensors ``sparse-24-bitmask``) arrays after validating them;
        safe on untrusted data. `shape` is (rows, cols) as a sequence or tensor ([2] or [2, 1])."""
        rows, cols = cls.validate_bitmask(compressed, bitmask, shape)
        width = _chunks(cols) * SPARSE24_CHUNK_COLS
        bits = unpack_bits(bitmask, cols)
        dense = torch.zeros(rows, width, dtype=compressed.dtype)
        dense[:, :cols][bits] = compressed.reshape(-1)
        kept = _padded(bits, width, False)
        kept.view(rows, width // _GROUP, _GROUP)[:, -(-cols // _GROUP):, :_KEPT] = True  # padding groups
        if cols % _GROUP == 1:  # a 1-column tail group: its second slot is a padding column
            kept[:, cols] = True
        return cls._pack(dense, kept, cols)

    # The canonical (checkpoint / state_dict) arrays by name: the sparse-24-bitmask layout.
    CANONICAL_KEYS = ("shape", "compressed", "bitmask")

    @classmethod
    def from_canonical(cls, arrays: dict) -> "Sparse24":
        """From canonical arrays by name; validated like from_bitmask."""
        return cls.from_bitmask(arrays["compressed"], arrays["bitmask"], arrays["shape"])

    def to_canonical(self) -> dict:
        """The canonical arrays by name (CANONICAL_KEYS), on the CPU."""
        compressed, bitmask, shape = self.to_bitmask()
        return {"shape": shape, "compressed": compressed, "bitmask": bitmask}

    @classmethod
    def validate_bitmask(cls, compressed, bitmask, shape) -> tuple[int, int]:
        """Prove canonical arrays are well formed; returns (rows, cols) or raises FormatError."""
        rows, cols = canonical_shape(shape, _fail)
        for name, t in (("compressed", compressed), ("bitmask", bitmask)):
            if not isinstance(t, torch.Tensor):
                _fail(name, f"must be a torch.Tensor, got {type(t).__name__}")
            if t.device.type != "cpu":
                _fail(name, f"must be on the CPU, got {t.device}")
        if compressed.dtype not in FLOAT_DTYPES:
            _fail("compressed", f"dtype must be one of {FLOAT_DTYPES}, got {compressed.dtype}")
        if bitmask.dtype != torch.uint8:
            _fail("bitmask", f"dtype must be uint8, got {bitmask.dtype}")
        kept = kept_per_row(cols)
        if tuple(compressed.shape) != (rows, kept):
            _fail("compressed", f"shape must be {(rows, kept)} for a {rows}x{cols} weight, "
                  f"got {tuple(compressed.shape)}")
        if tuple(bitmask.shape) != (rows, -(-cols // 8)):
            _fail("bitmask", f"shape must be {(rows, -(-cols // 8))}, got {tuple(bitmask.shape)}")
        if cols % 8:
            beyond = bitmask[:, -1].to(torch.int32) >> (cols % 8)
            if bool((beyond != 0).any()):
                r = int((beyond != 0).nonzero()[0, 0])
                _fail("bitmask", f"row {r} has bits set beyond column {cols - 1}")
        count = _group_counts(unpack_bits(bitmask, cols))
        groups = count.shape[1]
        want = torch.full((groups,), _KEPT, dtype=count.dtype)
        if cols % _GROUP:
            want[-1] = min(_KEPT, cols % _GROUP)
        bad = (count != want).nonzero()
        if bad.numel():
            r, g = (int(v) for v in bad[0])
            _fail("bitmask", f"{_group_name(r, g, cols)} have {int(count[r, g])} bits set; "
                  f"2:4 needs exactly {int(want[g])}")
        return rows, cols

    @classmethod
    def _pack(cls, dense: torch.Tensor, kept: torch.Tensor, cols: int) -> "Sparse24":
        """dense [rows, width] and kept [rows, width] (exactly 2 per group) -> kernel form."""
        rows, width = dense.shape
        groups, chunks = width // _GROUP, width // SPARSE24_CHUNK_COLS
        # stable descending sort of the 0/1 mask lists each group's two slots in column order
        pos = torch.sort(kept.view(rows, groups, _GROUP).to(torch.int8), dim=-1, descending=True,
                         stable=True).indices[..., :_KEPT]
        values = dense.view(rows, groups, _GROUP).gather(-1, pos).reshape(rows, groups * _KEPT)
        return cls._from_slots(values, pos.reshape(rows, groups * _KEPT), cols)

    @classmethod
    def _from_slots(cls, values: torch.Tensor, pos: torch.Tensor, cols: int) -> "Sparse24":
        """Slot values / in-group positions [rows, chunks * 16] (CPU) -> the CPU kernel form."""
        nnz = int((values != 0).sum())
        return cls((values.shape[0], cols), nnz, sparse24_cpu.pack_slots(values, pos))

    # ------------------------------------------------------------------ views
    def nbytes(self) -> int:
        """Bytes held by the packed form."""
        return self._p.nbytes()

    # ------------------------------------------------------------------ unpacking
    @property
    def chunks(self) -> int:
        return _chunks(self.cols)

    def _slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot values, in-group positions), row-major [rows, chunks * 16], on the CPU."""
        return self._p.slots(self.rows, self.chunks)

    def to_dense(self) -> torch.Tensor:
        """The dense [rows, cols] weight, on this weight's device."""
        return self._p.to_dense(self.rows, self.cols, self.chunks)

    def to_bitmask(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canonical (compressed, bitmask, shape): the compressed-tensors ``sparse-24-bitmask``
        layout (shape is int64 [2, 1]; bitmask little-endian per row)."""
        rows, cols = self.shape
        values, pos = self._slots()
        cols_of = (torch.arange(self.chunks * _CHUNK_SLOTS) // _KEPT) * _GROUP + pos
        real = cols_of < cols
        compressed = values[real].view(rows, kept_per_row(cols)).clone()
        bits = torch.zeros(rows, self.chunks * SPARSE24_CHUNK_COLS, dtype=torch.bool)
        bits.scatter_(1, cols_of, True)
        bitmask = pack_bits(_padded(bits[:, :cols], -(-cols // 8) * 8, False))
        shape = torch.tensor([[rows], [cols]], dtype=torch.int64)
        return compressed, bitmask, shape

    def to(self, target=None, *, dtype: Optional[torch.dtype] = None, device=None) -> "Sparse24":
        """Same pattern with values cast to another float dtype and/or moved to another device,
        re-packed once for that device's kernels (nnz is recounted: a cast can flush to zero)."""
        dtype, device = self._target(target, dtype, device)
        if device != self.device:
            values, pos = self._slots()
            moved = Sparse24._from_slots(values.to(dtype), pos, self.cols)
            if device.type == "cpu":
                return moved
            return Sparse24(self.shape, moved.nnz, sparse24_cuda.pack(values.to(dtype), pos, device))
        if dtype == self.dtype:
            return self
        packed = self._p.with_dtype(dtype)
        return Sparse24(self.shape, int((packed.values != 0).sum()), packed)

    def validate(self) -> None:
        """Re-prove the packed invariants (e.g. after tensors were loaded or mutated)."""
        p = self._p
        if p.values.dtype not in FLOAT_DTYPES:
            _fail("values", f"dtype must be one of {FLOAT_DTYPES}, got {p.values.dtype}")
        padding = p.validate_layout(self.rows, self.cols, self.chunks)
        values, pos = self._slots()
        cols_of = (torch.arange(self.chunks * _CHUNK_SLOTS) // _KEPT) * _GROUP + pos
        pairs = cols_of.view(self.rows, self.chunks * _CHUNK_SLOTS // _KEPT, _KEPT)
        if bool((pairs[..., 1] <= pairs[..., 0]).any()):
            _fail("meta", "the two slots of a group must name distinct columns in increasing order")
        if bool((values[cols_of >= self.cols] != 0).any()):
            _fail("values", "slots beyond the last column must hold zero")
        if bool((padding != 0).any()):
            _fail("values", "the rows padding the last quad (or row tile) must hold zero")
        if int((p.values != 0).sum()) != self.nnz:
            _fail("values", f"non-zero count differs from nnz {self.nnz}")

    def __repr__(self) -> str:
        return (f"Sparse24(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, "
                f"dtype={self.dtype}, device={self.device})")
