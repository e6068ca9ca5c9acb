"""Little-endian bit packing shared by the formats: bit c % 8 of byte c // 8 holds column c
(numpy's packbits(bitorder="little"), the compressed-tensors bitmask layout)."""
from __future__ import annotations

import torch

_BIT_WEIGHTS = 1 << torch.arange(8, dtype=torch.int32)
# byte -> its 8 bits, so unpacking is one gather (no [..., n, 8] int32 temporaries)
_BYTE_BITS = (torch.arange(256, dtype=torch.int32).unsqueeze(-1) & _BIT_WEIGHTS) != 0


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [..., 8 * n] -> uint8 [..., n]."""
    grouped = bits.view(*bits.shape[:-1], bits.shape[-1] // 8, 8).to(torch.int32)
    return (grouped * _BIT_WEIGHTS).sum(-1).to(torch.uint8).contiguous()


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 [..., n] -> bool [..., count] (count <= 8 * n)."""
    bits = _BYTE_BITS[packed.to(torch.int32)]
    return bits.view(*packed.shape[:-1], packed.shape[-1] * 8)[..., :count]


def popcount(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n] -> int64 [...]: set bits per row."""
    return _BYTE_BITS.sum(-1)[packed.to(torch.int32)].sum(-1)
