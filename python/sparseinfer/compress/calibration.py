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
                desc: str = "calibration", grad: bool = False, each: Optional[Callable[[Any], None]] = None,
                allow_empty: bool = False) -> int:
    """Feed every batch to forward(model, batch) (default call_model) in eval mode; returns the number
    of batches. Every module's train/eval flag is restored afterwards, even when a batch fails.

    grad=False runs under torch.no_grad(); each(output) sees every result (e.g. to backpropagate)."""
    if forward is not None and not callable(forward):
        raise TypeError("forward must be a callable (model, batch) -> output")
    forward = forward or call_model
    from tqdm.auto import tqdm
    modes = {module: module.training for module in model.modules()}
    count = 0
    try:
        model.eval()  # calibration statistics must not see dropout
        with torch.set_grad_enabled(grad):
            for batch in tqdm(batches, desc=desc, leave=False, disable=not progress):
                output = forward(model, batch)
                if each is not None:
                    each(output)
                count += 1
    finally:
        for module, training in modes.items():
            module.training = training
    if count == 0 and not allow_empty:
        raise ValueError(f"{desc}: no batches given")
    return count


class InputCollector:
    """Forward hooks that hand each layer's input, flattened to [tokens, in_features], to a callback.
    Use it as a context manager: the hooks are removed on exit, also when a batch fails."""

    def __init__(self, layers: dict[str, nn.Module], on_input: Callable[[str, torch.Tensor], None]):
        from ..nn.linear_like import linear_features
        self._handles = []
        for name, module in layers.items():
            in_features = linear_features(module)[1]

            def hook(mod, args, kwargs, name=name, in_features=in_features):
                x = args[0] if args else next(iter(kwargs.values()))
                on_input(name, x.detach().reshape(-1, in_features).float())
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def __enter__(self) -> "InputCollector":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
