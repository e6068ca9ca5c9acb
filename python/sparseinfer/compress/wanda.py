"""Wanda one-shot pruning (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
Language Models"): score |W_ij| * ||X_j||_2, with ||X_j|| the norm of input feature j over the
calibration tokens, and prune the lowest scores within each output row (or N:M group). No weight
update, no retraining. The activation norms come from one pass over the unpruned model, or, with
sequential=True, from the model pruned so far, group by group (as the paper's code does)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from ..nn.linear_like import is_hf_conv1d
from .calibration import Forward, collect_inputs, sequential_inputs
from .masks import PruningMasks
from .scores import SCOPES, check_sparsity, masks_from_scores
from .targets import LayerFilter, prunable_layers, rows_view


def input_norms(model: nn.Module, batches: Iterable, forward: Forward = None, filter: LayerFilter = None,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """||X_j||_2 over every calibration token, per input feature j of every Linear-like layer."""
    layers = prunable_layers(model, filter, linear_only=True)
    squares: dict[str, torch.Tensor] = {}

    def add(name: str, x: torch.Tensor) -> None:
        total = (x * x).sum(0)
        squares[name] = total if name not in squares else squares[name] + total

    collect_inputs(model, layers, batches, add, forward, progress, desc="wanda calibration")
    return {name: s.sqrt() for name, s in squares.items()}


def _score(module: nn.Module, norm: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||, shaped like module.weight."""
    weight = module.weight.detach().abs().float()
    # Scale input column j of the [out, in] view; a Conv1D's view is a transpose, so the
    # product already lies in the weight's own [in, out] memory order after .t().
    rows = rows_view(module, weight) * norm[None, :]
    return rows.t().contiguous() if is_hf_conv1d(module) else rows


def wanda_scores(model: nn.Module, batches: Iterable, forward: Forward = None, filter: LayerFilter = None,
                 progress: bool = False) -> dict[str, torch.Tensor]:
    """|W| * ||X_j|| per weight (shaped like each layer's weight), activations of the dense model."""
    layers = prunable_layers(model, filter, linear_only=True)
    norms = input_norms(model, batches, forward, filter, progress)
    return {name: _score(module, norms[name]) for name, module in layers.items()}


def prune_wanda(model: nn.Module, batches: Iterable, sparsity: float = 0.5, forward: Forward = None,
                filter: LayerFilter = None, n_m: Optional[tuple[int, int]] = None, scope: str = "row",
                sequential: bool = False, progress: bool = False) -> PruningMasks:
    """Wanda-prune every Linear-like layer of `model` in place (per output row by default, or N:M
    with n_m=(2, 4)); returns the attached masks (.finish("csr"/"2:4") swaps in sparse layers).

    sequential=True prunes layer group by layer group in execution order, each scored on the
    activations of the model pruned so far (as the paper's implementation does; one calibration
    pass per group instead of one in all). scope="global" needs every score at once, so it cannot
    be sequential."""
    layers = prunable_layers(model, filter, linear_only=True)
    if not sequential:
        scores = wanda_scores(model, batches, forward, filter, progress)
        return PruningMasks(model, masks_from_scores(scores, sparsity, scope, n_m=n_m, modules=layers))
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "global":
        raise ValueError("scope='global' compares all layers at once; it cannot be sequential")
    if n_m is None:
        check_sparsity(sparsity)
    squares: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}

    def add(name: str, x: torch.Tensor) -> None:
        squares[name] = (x * x).sum(0) + squares.get(name, 0)

    def prune_group(names: list[str]) -> None:
        for name in names:
            scores = {name: _score(layers[name], squares[name].sqrt())}
            masks[name] = masks_from_scores(scores, sparsity, scope, n_m=n_m, modules=layers)[name]
            with torch.no_grad():
                layers[name].weight.mul_(masks[name])

    sequential_inputs(model, layers, batches, forward, add, prune_group, progress)
    return PruningMasks(model, masks)
