"""Gradient (first-order Taylor) importance (Molchanov et al. 2016/2019, "Importance Estimation for
Neural Network Pruning"): the loss change from removing w is about |w * dL/dw|; accumulated over
batches, it ranks weights by how much the loss depends on them, not only by their size."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from .calibration import run_batches
from .masks import PruningMasks
from .scores import masks_from_scores
from .targets import LayerFilter, prunable_layers

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def taylor_scores(model: nn.Module, batches: Iterable, loss_fn: LossFn, filter: LayerFilter = None,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """sum over batches of |w * dL/dw| for every prunable layer. loss_fn(model, batch) -> scalar.

    The model's .grad fields are left as they were found (accumulation uses autograd.grad)."""
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a callable (model, batch) -> scalar loss")
    layers = prunable_layers(model, filter)
    weights = [m.weight for m in layers.values()]
    frozen = [name for name, w in zip(layers, weights) if not w.requires_grad]
    if frozen:
        raise ValueError(f"weights of {frozen} do not require grad; Taylor importance needs gradients")
    totals = [torch.zeros_like(w, dtype=torch.float32) for w in weights]

    def accumulate(loss: Any) -> None:
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        for total, w, g in zip(totals, weights, grads):
            if g is not None:
                total.add_((w.detach() * g).abs().float())

    run_batches(model, batches, loss_fn, progress, desc="taylor importance", grad=True, each=accumulate)
    return dict(zip(layers, totals))


def prune_taylor(model: nn.Module, batches: Iterable, loss_fn: LossFn, sparsity: float, scope: str = "layer",
                 filter: LayerFilter = None, n_m: Optional[tuple[int, int]] = None,
                 progress: bool = False) -> PruningMasks:
    """Prune the weights of lowest accumulated |w * grad| in place; returns the attached masks."""
    layers = prunable_layers(model, filter, linear_only=n_m is not None)
    scores = taylor_scores(model, batches, loss_fn, filter, progress)
    return PruningMasks(model, masks_from_scores({n: scores[n] for n in layers}, sparsity, scope,
                                                 n_m=n_m, modules=layers))
