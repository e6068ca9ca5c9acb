"""From importance scores to pruning masks: the comparison groups every unstructured method shares.

A score dict maps a layer's dotted name to a tensor shaped like its weight (higher = keep). The same
function turns magnitude, Wanda and Taylor scores into masks, so the methods differ only in scores.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..nn.linear_like import is_hf_conv1d
from ..formats.n_m import n_m_mask
from .targets import rows_view

SCOPES = ("layer", "global", "row")


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _keep_top(flat: torch.Tensor, prune: int) -> torch.Tensor:
    """Mask keeping all but the `prune` lowest entries of each row of `flat` (ties: lower index pruned
    first, so the result is deterministic)."""
    mask = torch.ones_like(flat, dtype=torch.bool)
    if prune > 0:
        order = torch.sort(flat, dim=-1, stable=True).indices[..., :prune]
        mask.scatter_(-1, order, False)
    return mask


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "layer",
                      n_m: Optional[tuple[int, int]] = None,
                      modules: Optional[dict[str, nn.Module]] = None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = keep) removing the lowest-scoring `sparsity` fraction of weights.

    scope="layer": the same fraction in every layer; "global": one threshold over all layers (layers
    end up with different sparsities); "row": the same fraction in every output row (Wanda's choice).
    n_m=(n, m): semi-structured instead, keep the n highest scores of every m consecutive input
    columns (sparsity and scope are then ignored). `modules` (name -> layer) lets row/N:M grouping
    follow a Conv1D's transposed weight; default is [out, ...] weights."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not scores:
        raise ValueError("scores is empty")
    for name, s in scores.items():
        if not isinstance(s, torch.Tensor) or not s.is_floating_point() or s.dim() < 2:
            raise ValueError(f"scores[{name!r}] must be a floating tensor shaped like the weight")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"scores[{name!r}] holds inf or nan")
    modules = modules or {}

    def as_rows(name, t):
        return rows_view(modules[name], t) if name in modules else t.reshape(t.shape[0], -1)

    if n_m is not None:
        n, m = n_m
        masks = {}
        for name, s in scores.items():
            rows = as_rows(name, s.float())
            masks[name] = _unview(name, n_m_mask(rows, n, m), s, modules)
        return masks
    sparsity = check_sparsity(sparsity)
    if scope == "global":
        flat = torch.cat([s.detach().float().flatten() for s in scores.values()])
        prune = math.floor(sparsity * flat.numel())
        keep = _keep_top(flat, prune)
        masks, offset = {}, 0
        for name, s in scores.items():
            masks[name] = keep[offset:offset + s.numel()].view(s.shape)
            offset += s.numel()
        return masks
    masks = {}
    for name, s in scores.items():
        if scope == "layer":
            flat = s.detach().float().flatten()
            masks[name] = _keep_top(flat, math.floor(sparsity * flat.numel())).view(s.shape)
        else:
            rows = as_rows(name, s.detach().float())
            keep = _keep_top(rows, math.floor(sparsity * rows.shape[1]))
            masks[name] = _unview(name, keep, s, modules)
    return masks


def _unview(name: str, rows_mask: torch.Tensor, like: torch.Tensor, modules: dict) -> torch.Tensor:
    """Undo as_rows: back to the weight's own shape and orientation."""
    if name in modules and is_hf_conv1d(modules[name]):
        return rows_mask.t().contiguous()  # Conv1D stores [in, out]; rows_view transposed it
    return rows_mask.reshape(like.shape)
