"""Host-memory helpers for packing at I/O speed (numpy does what torch does slowly on the CPU).

- numpy views of CPU tensors, bit for bit (16-bit floats, which numpy lacks or computes in
  software, as int16), and tensors back from numpy arrays;
- buffers numpy allocates: it asks the kernel for huge pages on large arrays, so filling a fresh
  buffer costs a fraction of the page faults of torch's allocator (which dominate a one-pass
  packing step on a whole model);
- the exact-zero test (-0.0 is zero, NaN is not), boolean compaction and byte-table lookups.
"""
from __future__ import annotations

import numpy as np
import torch

_HALF = (torch.bfloat16, torch.float16)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view (no copy) of a CPU tensor; bfloat16 / float16 are viewed as int16."""
    t = t.detach()
    if t.dtype in _HALF:
        t = t.view(torch.int16)
    return t.numpy()


def from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """The tensor sharing `a`'s memory, of `dtype` (a 16-bit float if `a` holds its int16 bits)."""
    t = torch.from_numpy(a)
    return t.view(dtype) if dtype in _HALF else t


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor in memory numpy allocated (huge pages where the kernel offers them)."""
    np_dtype = np.int16 if dtype in _HALF else torch.empty(0, dtype=dtype).numpy().dtype
    return from_numpy(np.empty(shape, dtype=np_dtype), dtype)


def zeros(shape, dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor in memory numpy allocated."""
    np_dtype = np.int16 if dtype in _HALF else torch.empty(0, dtype=dtype).numpy().dtype
    return from_numpy(np.zeros(shape, dtype=np_dtype), dtype)


def nonzero(a: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """bool array: True where the values of `a` (as_numpy of a `dtype` tensor) are not exactly
    zero (-0.0 is zero; NaN is not)."""
    if dtype in _HALF:
        return (a & np.int16(0x7FFF)) != 0
    return a != 0


def count_nonzero(t: torch.Tensor) -> int:
    """Entries of `t` that are not exactly zero (-0.0 is zero; NaN is not). numpy counts a CPU
    tensor several times faster than torch.count_nonzero; other devices use torch."""
    if t.device.type != "cpu" or t.is_complex() or t.dtype == torch.bool:
        return int(torch.count_nonzero(t))
    a = as_numpy(t)
    if t.dtype in _HALF:
        a = a & np.int16(0x7FFF)
    return int(np.count_nonzero(a))


def compact(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """values[keep] for same-shaped arrays, row-major, as a 1-D array (numpy's compress, several
    times faster than boolean indexing)."""
    return np.compress(np.ascontiguousarray(keep).reshape(-1), np.ascontiguousarray(values).reshape(-1))


def lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """table[index] for a small table and a uint8 (or other integer) index array."""
    return np.take(table, index)


def expand(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The inverse of compact: an array shaped like `keep`, zero except where it is True, which
    take `values` in row-major order (len(values) == keep.sum())."""
    out = np.zeros(keep.shape, dtype=values.dtype)
    out.reshape(-1)[np.flatnonzero(keep)] = values
    return out
