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
    """Forward hooks that hand each layer's input, flattened to [tokens, in_features] fp32, to a
    callback (raw=True: the tensor as given, when its identity matters). Use it as a context
    manager: the hooks are removed on exit, also when a batch fails."""

    def __init__(self, layers: dict[str, nn.Module], on_input: Callable[[str, torch.Tensor], None],
                 raw: bool = False):
        from ..nn.linear_like import linear_features
        self._handles = []
        for name, module in layers.items():
            in_features = linear_features(module)[1]

            def hook(mod, args, kwargs, name=name, in_features=in_features):
                x = args[0] if args else next(iter(kwargs.values()))
                on_input(name, x if raw else x.detach().reshape(-1, in_features).float())
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def __enter__(self) -> "InputCollector":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def _check_reached(layers: dict[str, nn.Module], reached) -> None:
    missing = sorted(set(layers) - set(reached))
    if missing:
        raise ValueError(f"calibration never reached layer(s) {missing}; exclude them with filter")


def collect_inputs(model: nn.Module, layers: dict[str, nn.Module], batches: Iterable,
                   on_input: Callable[[str, torch.Tensor], None], forward: Forward = None,
                   progress: bool = False, desc: str = "calibration") -> None:
    """One calibration pass handing every layer's flattened inputs to on_input(name, x); a layer
    the batches never reach is an error (the caller's filter should exclude it)."""
    reached = set()

    def take(name: str, x: torch.Tensor) -> None:
        reached.add(name)
        on_input(name, x)

    with InputCollector(layers, take):
        run_batches(model, batches, forward, progress, desc=desc)
    _check_reached(layers, reached)


class _StopForward(Exception):
    """Raised by a hook once the layers of interest have seen their input: the rest of the
    forward pass is not needed."""


def execution_groups(model: nn.Module, layers: dict[str, nn.Module], batch: Any,
                     forward: Forward = None) -> list[list[str]]:
    """The layers in the order the first batch reaches them, grouped when consecutive layers read
    the very same input tensor (q/k/v projections, gate/up projections): one group is pruned at
    once in sequential calibration."""
    order: list[tuple[str, int]] = []

    def record(name: str, x: torch.Tensor) -> None:
        if all(seen != name for seen, _ in order):
            order.append((name, x.data_ptr()))

    with InputCollector(layers, record, raw=True):
        run_batches(model, [batch], forward, desc="layer order")
    groups: list[list[str]] = []
    for i, (name, ptr) in enumerate(order):
        if i and ptr == order[i - 1][1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def sequential_inputs(model: nn.Module, layers: dict[str, nn.Module], batches: list, forward: Forward,
                      on_input: Callable[[str, torch.Tensor], None], prune_group: Callable[[list[str]], None],
                      progress: bool = False) -> None:
    """Sequential calibration, as Wanda and SparseGPT do it: for each group of layers in execution
    order, run the calibration batches through the model *as pruned so far* (stopping the forward
    pass once the group has its inputs), hand those inputs to on_input, then prune_group(names).
    Later layers thus see the activations the pruned earlier layers really produce."""
    batches = list(batches)
    if not batches:
        raise ValueError("calibration: no batches given")
    groups = execution_groups(model, layers, batches[0], forward)
    _check_reached(layers, [name for group in groups for name in group])
    from tqdm.auto import tqdm
    for group in tqdm(groups, desc="sequential calibration", leave=False, disable=not progress):
        wanted, pending = set(group), set(group)

        def take(name: str, x: torch.Tensor) -> None:
            on_input(name, x)
            pending.discard(name)
            if not pending:
                raise _StopForward

        def stop_early(model_, batch):
            pending.update(wanted)
            try:
                (forward or call_model)(model_, batch)
            except _StopForward:
                pass
        with InputCollector({name: layers[name] for name in group}, take):
            run_batches(model, batches, stop_early, desc="calibration")
        prune_group(group)
