"""compressed-tensors ``pack-quantized`` int32 packing: values stored as q + 2^(b-1), LSB first,
32 // b per int32 along the input dimension (so each little-endian int32 holds consecutive
columns in ascending bit order)."""
from __future__ import annotations

import torch

from .errors import CheckpointError


def packed_width(cols: int, bits: int) -> int:
    return -(-cols // (32 // bits))


def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 [rows, cols] with values in the signed b-bit range -> int32 [rows, ceil(cols * b / 32)]."""
    rows, cols = q.shape
    per_word = 32 // bits
    padded = torch.zeros(rows, packed_width(cols, bits) * per_word, dtype=torch.int32)
    padded[:, :cols] = q.to(torch.int32) + (1 << (bits - 1))
    words = padded.view(rows, -1, per_word).to(torch.int64) << (bits * torch.arange(per_word))
    words = words.sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int, name: str) -> torch.Tensor:
    """Inverse of pack_int32, validating the untrusted array (`name` goes in the errors)."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise CheckpointError(f"tensor {name}: must be a 2-D int32 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.shape[1] != packed_width(cols, bits):
        raise CheckpointError(f"tensor {name}: {packed.shape[1]} int32 per row, but {cols} columns of {bits} bits "
                              f"need {packed_width(cols, bits)}")
    rows = packed.shape[0]
    if packed.numel() == 0:  # no rows, or no columns
        return torch.zeros(rows, cols, dtype=torch.int8)
    as_bytes = packed.contiguous().view(torch.uint8).reshape(rows, packed.shape[1] * 4)  # little-endian: low byte first
    if bits == 8:
        unsigned = as_bytes
    else:  # 4 bits: low nibble first
        unsigned = torch.stack((as_bytes & 0xF, as_bytes >> 4), dim=-1).reshape(rows, packed.shape[1] * 8)
    return (unsigned[:, :cols].to(torch.int16) - (1 << (bits - 1))).to(torch.int8)


def pack_int32_dim0(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 [rows, cols] -> int32 [ceil(rows * b / 32), cols], packed along dim 0 (the layout
    compressed-tensors 0.14 uses for pack-quantized ``weight_zero_point``: word i of column c
    holds rows 32/b * i ... in ascending bit order, each stored as value + 2^(b-1))."""
    return pack_int32(q.t(), bits).t().contiguous()


def unpack_int32_dim0(packed: torch.Tensor, bits: int, rows: int, cols: int, name: str) -> torch.Tensor:
    """Inverse of pack_int32_dim0 for a [rows, cols] array, validating the untrusted tensor."""
    want = (packed_width(rows, bits), cols)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32 or tuple(packed.shape) != want:
        got = f"{packed.dtype} of shape {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else repr(packed)
        raise CheckpointError(f"tensor {name}: must be int32 of shape {want} ({rows} rows x {cols} groups of "
                              f"{bits}-bit values packed along dim 0, as compressed-tensors stores them), got {got}")
    return unpack_int32(packed.t().contiguous(), bits, rows, name).t().contiguous()
