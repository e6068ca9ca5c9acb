"""Which modules the unstructured pruning methods act on, and their weights' orientation."""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from ..nn.linear_like import is_hf_conv1d, is_linear_like

LayerFilter = Optional[Callable[[str, nn.Module], bool]]


def is_prunable(module: nn.Module) -> bool:
    """nn.Linear, Hugging Face Conv1D and nn.Conv2d: the layers whose weight elements can be masked."""
    return is_linear_like(module) or type(module) is nn.Conv2d


def prunable_layers(model: nn.Module, filter: LayerFilter = None, linear_only: bool = False) -> dict[str, nn.Module]:
    """{dotted name: module} of the prunable layers of `model`, in module order.

    filter(name, module) -> bool may exclude layers (e.g. lambda name, m: name != "lm_head").
    linear_only keeps only Linear-like layers (methods defined on x @ W.T, such as Wanda)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if filter is not None and not callable(filter):
        raise TypeError("filter must be a callable (name, module) -> bool")
    check = is_linear_like if linear_only else is_prunable
    layers = {name: m for name, m in model.named_modules() if check(m) and (filter is None or filter(name, m))}
    if not layers:
        kinds = "Linear" if linear_only else "Linear/Conv1D/Conv2d"
        raise ValueError(f"model has no {kinds} layers to prune (after filter)")
    return layers


def rows_view(module: nn.Module, tensor):
    """`tensor` shaped like module.weight, viewed as [out_features, fan_in] (Conv1D stores [in, out])."""
    if is_hf_conv1d(module):
        return tensor.t()
    return tensor.reshape(tensor.shape[0], -1)
