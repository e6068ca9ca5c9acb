"""Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections"),
layer-wise or with one global threshold, and N:M magnitude masks for whole models."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .masks import PruningMasks
from .scores import masks_from_scores
from .targets import LayerFilter, prunable_layers


def magnitude_scores(model: nn.Module, filter: LayerFilter = None) -> dict[str, torch.Tensor]:
    """|W| of every prunable layer (Linear, HF Conv1D, Conv2d), keyed by dotted name."""
    return {name: m.weight.detach().abs().float() for name, m in prunable_layers(model, filter).items()}


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "layer", filter: LayerFilter = None,
                    n_m: Optional[tuple[int, int]] = None) -> dict[str, torch.Tensor]:
    """Keep-masks removing the smallest-|w| `sparsity` fraction per layer (scope="layer"), over all
    layers at once ("global") or per output row ("row"); n_m=(2, 4) gives N:M masks instead."""
    layers = prunable_layers(model, filter, linear_only=n_m is not None)
    scores = {name: m.weight.detach().abs().float() for name, m in layers.items()}
    return masks_from_scores(scores, sparsity, scope, n_m=n_m, modules=layers)


def prune_magnitude(model: nn.Module, sparsity: float, scope: str = "layer", filter: LayerFilter = None,
                    n_m: Optional[tuple[int, int]] = None) -> PruningMasks:
    """Magnitude-prune `model` in place and return the attached masks (they hold through training;
    call .finish("csr") or .finish("2:4") to swap in sparseinfer's sparse layers)."""
    return PruningMasks(model, magnitude_masks(model, sparsity, scope, filter, n_m))
