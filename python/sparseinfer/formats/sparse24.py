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
methods (slots, canonical_bitmask, to_dense, nbytes, with_dtype, validate_layout), so nothing here
asks which one it holds. The CPU layout is packed without sorting: byte tables over the non-zero
(or canonical) bitmask give every group's kept columns and meta bits (sparse24_cpu), a block of
rows at a time.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .._native import FLOAT_DTYPES, SPARSE24_CHUNK_COLS
from . import sparse24_cpu, sparse24_cuda
from . import host
from .base import PackedWeight, canonical_shape
from .bits import POPCOUNT8, pack_bits_np
from .errors import FormatError

_GROUP = 4
_KEPT = 2
_BLOCK_BYTES = 4 << 20  # weight bytes from_dense packs per block of rows
_CHUNK_SLOTS = sparse24_cpu.CHUNK_SLOTS


def _fail(name: str, message: str) -> None:
    raise FormatError(f"Sparse24 {name}: {message}", array=name, detail=message)


def _chunks(cols: int) -> int:
    return -(-cols // SPARSE24_CHUNK_COLS)


def kept_per_row(cols: int) -> int:
    """Slots per row in the canonical layout: 2 per full group, min(2, rest) for a partial one."""
    return _KEPT * (cols // _GROUP) + min(_KEPT, cols % _GROUP)


# set bits in the low and the high nibble of every byte value (a bitmask byte holds two groups)
_NIBBLE_COUNTS = np.array([[bin(b & 15).count("1"), bin(b >> 4).count("1")] for b in range(256)], dtype=np.uint8)
# bytes with a nibble of more than 2 set bits
_OVER_TWO = (_NIBBLE_COUNTS > _KEPT).any(-1)


def _group_counts(mask_bytes: np.ndarray, cols: int) -> np.ndarray:
    """Bitmask uint8 [rows, ceil(cols / 8)] -> uint8 [rows, ceil(cols / 4)]: set bits per group
    of 4 columns."""
    rows = mask_bytes.shape[0]
    return np.take(_NIBBLE_COUNTS, mask_bytes, axis=0).reshape(rows, 2 * mask_bytes.shape[1])[:, : -(-cols // _GROUP)]


def _violation(nonzero_bytes: np.ndarray, cols: int, row0: int = 0) -> Optional[str]:
    """None if no group of 4 columns of a non-zero bitmask [rows, ceil(cols / 8)] (rows row0..)
    holds more than 2 set bits, else where the first one (row-major) is and how many it holds."""
    if not np.take(_OVER_TWO, nonzero_bytes).any():
        return None
    count = _group_counts(nonzero_bytes, cols)
    r, g = np.unravel_index(int(np.argmax(count > _KEPT)), count.shape)
    return (f"{_group_name(row0 + int(r), int(g), cols)} hold {int(count[r, g])} non-zeros (2:4 "
            f"allows at most 2 in every group of 4 consecutive input columns)")


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
        dense = host.as_numpy(weight.cpu())
        return _violation(pack_bits_np(host.nonzero(dense, weight.dtype)), weight.shape[1])

    @staticmethod
    def first_violation_bitmask(bitmask: torch.Tensor, cols: int) -> Optional[str]:
        """first_violation of a weight given as its non-zero bitmask (uint8 [rows, ceil(cols / 8)],
        the canonical layout: column c is bit c % 8 of byte c // 8), without unpacking it."""
        return _violation(host.as_numpy(bitmask), cols)

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "Sparse24":
        """Pack a dense 2-D weight that is already 2:4; raises Not24Error (a ValueError) naming
        the first group with more than 2 non-zeros otherwise (prune first with
        sparseinfer.compress.prune_2_4)."""
        device = weight.device if isinstance(weight, torch.Tensor) else None
        weight = cls._checked_dense(weight)
        rows, cols = weight.shape
        chunks = _chunks(cols)
        width = chunks * SPARSE24_CHUNK_COLS
        # Slots: non-zeros first, then real (not padding) columns, then the lowest column (see
        # sparse24_cpu._slot_positions); byte tables over the non-zero bitmask give the kept
        # columns and the meta words, numpy compacts the kept values: no sort, no int64 temporaries.
        # A block of rows at a time (its temporaries stay in cache), written straight into the layout.
        dense = host.as_numpy(weight)
        layout = sparse24_cpu.empty_layout(rows, chunks, weight.dtype)
        step = max(4, _BLOCK_BYTES // max(1, width * weight.element_size()) // 4 * 4)
        nnz = 0
        for r0 in range(0, rows, step):
            block = dense[r0:r0 + step]
            nonzero_bytes = pack_bits_np(host.nonzero(block, weight.dtype))
            problem = _violation(nonzero_bytes, cols, r0)
            if problem is not None:
                raise Not24Error(problem)
            chunk_bytes = sparse24_cpu.chunk_bytes(nonzero_bytes, chunks)
            kept = np.unpackbits(np.take(sparse24_cpu.KEPT_BYTE, chunk_bytes), axis=-1, bitorder="little")
            if width != cols:
                padded = np.zeros((block.shape[0], width), dtype=block.dtype)
                padded[:, :cols] = block
                block = padded
            values = host.compact(block, kept.view(np.bool_)).reshape(block.shape[0], width // 2)
            sparse24_cpu.pack_block(layout, r0, host.from_numpy(values, weight.dtype),
                                    sparse24_cpu.meta_words(chunk_bytes))
            nnz += int(np.take(POPCOUNT8, nonzero_bytes).sum(dtype=np.int64))
        packed = cls((rows, cols), nnz, layout)
        return packed.to(device) if device.type == "cuda" else packed

    @classmethod
    def from_bitmask(cls, compressed: torch.Tensor, bitmask: torch.Tensor, shape) -> "Sparse24":
        """Pack canonical (compressed-tensors ``sparse-24-bitmask``) arrays after validating them;
        safe on untrusted data. `shape` is (rows, cols) as a sequence or tensor ([2] or [2, 1])."""
        rows, cols = cls.validate_bitmask(compressed, bitmask, shape)
        # Every group holds exactly its 2 slots (a 1-column tail: 1, plus the padding column 1,
        # which the slot rule picks too), in column order: the slot values are `compressed` zero
        # padded to whole chunks and the meta words a byte table over the bitmask.
        chunks = _chunks(cols)
        meta = sparse24_cpu.meta_words(sparse24_cpu.chunk_bytes(bitmask.numpy(), chunks))
        layout = sparse24_cpu.empty_layout(rows, chunks, compressed.dtype)
        slots = chunks * _CHUNK_SLOTS
        step = max(4, _BLOCK_BYTES // max(1, slots * compressed.element_size()) // 4 * 4)
        scratch = None if compressed.shape[1] == slots else torch.zeros(min(step, rows), slots, dtype=compressed.dtype)
        for r0 in range(0, rows, step):
            values = compressed[r0:r0 + step]
            if scratch is not None:  # zero slots pad the rows to whole chunks
                scratch[: values.shape[0], : values.shape[1]] = values
                values = scratch[: values.shape[0]]
            sparse24_cpu.pack_block(layout, r0, values, meta[r0:r0 + step])
        return cls((rows, cols), host.count_nonzero(compressed), layout)

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
        count = _group_counts(bitmask.numpy(), cols)
        want = np.full(count.shape[1], _KEPT, dtype=count.dtype)
        if cols % _GROUP:
            want[-1] = min(_KEPT, cols % _GROUP)
        bad = count != want
        if bad.any():
            r, g = (int(v) for v in np.unravel_index(int(np.argmax(bad)), bad.shape))
            _fail("bitmask", f"{_group_name(r, g, cols)} have {int(count[r, g])} bits set; "
                  f"2:4 needs exactly {int(want[g])}")
        return rows, cols

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
        return self._p.canonical_bitmask(self.rows, self.cols, self.chunks)

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
