"""Little-endian bit packing shared by the formats: bit c % 8 of byte c // 8 holds column c
(numpy's packbits(bitorder="little"), the compressed-tensors bitmask layout). numpy packs,
unpacks and counts bits natively, one pass at memory speed."""
from __future__ import annotations

import numpy as np
import torch

from .host import as_numpy

# popcount of every byte value
POPCOUNT8 = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)


def pack_bits_np(bits: np.ndarray) -> np.ndarray:
    """bool [..., n] -> uint8 [..., ceil(n / 8)] (the last byte zero padded)."""
    return np.packbits(bits, axis=-1, bitorder="little")


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [..., n] -> uint8 [..., ceil(n / 8)] (the last byte zero padded; n = 8 * k packs exactly)."""
    return torch.from_numpy(pack_bits_np(as_numpy(bits)))


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 [..., n] -> bool [..., count] (count <= 8 * n)."""
    a = as_numpy(packed)
    if a.shape[-1] == 0:  # numpy refuses count > 0 bits from an empty axis
        return torch.zeros(*packed.shape[:-1], count, dtype=torch.bool)
    bits = np.unpackbits(a, axis=-1, count=count, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_))


def popcount_np(packed: np.ndarray) -> np.ndarray:
    """uint8 [..., n] -> int64 [...]: set bits per row."""
    return np.take(POPCOUNT8, packed).sum(-1, dtype=np.int64)


def popcount(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n] -> int64 [...]: set bits per row."""
    return torch.from_numpy(np.asarray(popcount_np(as_numpy(packed)), dtype=np.int64).reshape(packed.shape[:-1]))
