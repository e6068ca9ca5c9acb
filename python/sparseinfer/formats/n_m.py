"""N:M semi-structured magnitude pruning: keep the n largest |w| in every group of m consecutive
input columns (the last dimension). 2:4 is what sparseinfer.formats.Sparse24 runs. It lives with
the formats so that both the layers (nn) and the compression toolkit (compress, which re-exports
it) import it downward.

Ties are broken deterministically: among equal magnitudes the lower column index is kept. When
the number of columns is not a multiple of m, the last, shorter group keeps its n largest (all of
them if it has n or fewer columns).
"""
from __future__ import annotations

import torch


def n_m_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask, True where `weight` is kept under n:m magnitude pruning along the last dim."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    if weight.dim() < 1:
        raise ValueError("weight must have at least one dimension (groups run along the last)")
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise ValueError(f"n and m must be integers, got n={n!r}, m={m!r}")
    if not 0 <= n <= m or m < 1:
        raise ValueError(f"need 0 <= n <= m and m >= 1, got n={n}, m={m}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight holds inf or nan; magnitude pruning needs finite values")
    cols = weight.shape[-1]
    lead = weight.shape[:-1]
    groups = -(-cols // m)
    # Padding columns get magnitude -1 so they are never preferred over a real column.
    magnitude = torch.full((*lead, groups * m), -1.0, dtype=torch.float32, device=weight.device)
    magnitude[..., :cols] = weight.detach().abs().float()
    magnitude = magnitude.view(*lead, groups, m)
    order = torch.sort(magnitude, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(magnitude, dtype=torch.bool).scatter_(-1, order, True)
    return mask.view(*lead, groups * m)[..., :cols]


def prune_n_m(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """A copy of `weight` with all but the n largest |w| of every m consecutive input columns zeroed."""
    mask = n_m_mask(weight, n, m)
    return torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype))


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """2:4 magnitude pruning (see prune_n_m); the result packs with Sparse24.from_dense."""
    return prune_n_m(weight, 2, 4)
