"""Wanda one-shot pruning (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
Language Models"): score |W_ij| * ||X_j||_2, with ||X_j|| the norm of input feature j over the
calibration tokens, and prune the lowest scores within each output row (or N:M group). No weight
update, no retraining. The activation norms come from one pass over the unpruned model."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from ..nn.linear_like import is_hf_conv1d
from .calibration import Forward, InputCollector, run_batches
from .masks import PruningMasks
from .scores import masks_from_scores
from .targets import LayerFilter, prunable_layers, rows_view


def input_norms(model: nn.Module, batches: Iterable, forward: Forward = None, filter: LayerFilter = None,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """||X_j||_2 over every calibration token, per input feature j of every Linear-like layer."""
    layers = prunable_layers(model, filter, linear_only=True)
    squares: dict[str, torch.Tensor] = {}

    def add(name: str, x: torch.Tensor) -> None:
        total = (x * x).sum(0)
        squares[name] = total if name not in squares else squares[name] + total

    with InputCollector(layers, add):
        run_batches(model, batches, forward, progress, desc="wanda calibration")
    missing = sorted(set(layers) - set(squares))
    if missing:
        raise ValueError(f"calibration never reached layer(s) {missing}; exclude them with filter")
    return {name: s.sqrt() for name, s in squares.items()}


def wanda_scores(model: nn.Module, batches: Iterable, forward: Forward = None, filter: LayerFilter = None,
                 progress: bool = False) -> dict[str, torch.Tensor]:
    """|W| * ||X_j|| per weight (shaped like each layer's weight)."""
    layers = prunable_layers(model, filter, linear_only=True)
    norms = input_norms(model, batches, forward, filter, progress)
    scores = {}
    for name, module in layers.items():
        weight = module.weight.detach().abs().float()
        # Scale input column j of the [out, in] view; a Conv1D's view is a transpose, so the
        # product already lies in the weight's own [in, out] memory order after .t().
        rows = rows_view(module, weight) * norms[name][None, :]
        scores[name] = rows.t().contiguous() if is_hf_conv1d(module) else rows
    return scores


def prune_wanda(model: nn.Module, batches: Iterable, sparsity: float = 0.5, forward: Forward = None,
                filter: LayerFilter = None, n_m: Optional[tuple[int, int]] = None, scope: str = "row",
                progress: bool = False) -> PruningMasks:
    """Wanda-prune every Linear-like layer of `model` in place (per output row by default, or N:M
    with n_m=(2, 4)); returns the attached masks (.finish("csr"/"2:4") swaps in sparse layers)."""
    layers = prunable_layers(model, filter, linear_only=True)
    scores = wanda_scores(model, batches, forward, filter, progress)
    return PruningMasks(model, masks_from_scores(scores, sparsity, scope, n_m=n_m, modules=layers))
