"""Running calibration batches through a model: the one loop every data-aware method shares."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

Forward = Optional[Callable[[nn.Module, Any], Any]]


def call_model(model: nn.Module, batch: Any) -> Any:
    """model(batch), model(*batch) for a tuple/list of inputs, model(**batch) for a dict."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def run_batches(model: nn.Module, batches: Iterable, forward: Forward = None, progress: bool = False,
                desc: str = "calibration", grad: bool = False, each: Optional[Callable[[Any], None]] = None) -> int:
    """Feed every batch to forward(model, batch) (default call_model); returns the number of batches.

    grad=False runs under torch.no_grad(); each(output) sees every result (e.g. to backpropagate)."""
    if forward is not None and not callable(forward):
        raise TypeError("forward must be a callable (model, batch) -> output")
    forward = forward or call_model
    iterator = batches
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(batches, desc=desc, leave=False)
    count = 0
    with torch.set_grad_enabled(grad):
        for batch in iterator:
            output = forward(model, batch)
            if each is not None:
                each(output)
            count += 1
    if count == 0:
        raise ValueError(f"{desc}: no batches given")
    return count


class InputCollector:
    """Forward hooks that hand each layer's input, flattened to [tokens, in_features], to a callback."""

    def __init__(self, layers: dict[str, nn.Module], on_input: Callable[[str, torch.Tensor], None]):
        from ..nn.linear_like import linear_features
        self._handles = []
        for name, module in layers.items():
            in_features = linear_features(module)[1]

            def hook(mod, args, name=name, in_features=in_features):
                x = args[0].detach()
                on_input(name, x.reshape(-1, in_features).float())
            self._handles.append(module.register_forward_pre_hook(hook))

    def __enter__(self) -> "InputCollector":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
