"""Finding attention modules, per-head gates and head importance.

Importance follows Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?": each
head h gets a gate xi_h = 1 that scales its slice of the input of the attention output projection;
the importance of h is the expected |dL/dxi_h| over data. A data-free alternative ("weight_norm")
scores a head by the norm of its output-projection columns.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from .attention_adapters import SUPPORTED, _adapter_for, _Adapter
from .calibration import run_batches
from .pruned_mha import _gated_torch_mha_forward

METHODS = ("gradient", "weight_norm")


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every supported attention module of `model`, keyed by dotted name (the keys used by
    head_importance, head_gates and prune_heads)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if _adapter_for(m) is not None}


def _attention_module(model: nn.Module, name: str) -> tuple[nn.Module, _Adapter]:
    if not isinstance(name, str):
        raise TypeError(f"attention module names must be strings, got {name!r}")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model has no module named {name!r}") from None
    adapter = _adapter_for(module)
    if adapter is None:
        raise TypeError(f"module {name!r} is a {type(module).__name__}, not a supported attention "
                        f"module ({SUPPORTED})")
    return module, adapter


def head_counts(model: nn.Module) -> dict[str, int]:
    """Number of heads of every supported attention module, by dotted name."""
    return {name: _adapter_for(m).layout(m).num_heads for name, m in attention_modules(model).items()}


def _module_device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _gate_input_hook(gate: torch.Tensor, head_dim: int, module: nn.Module, args: tuple):
    hidden = args[0]
    return (hidden * gate.repeat_interleave(head_dim).to(hidden.dtype),) + tuple(args[1:])


@contextmanager
def head_gates(model: nn.Module, names: Optional[Iterable[str]] = None) -> Iterator[dict[str, torch.Tensor]]:
    """Attach a gate of ones (float32, requires_grad) per head of each attention module.

    Inside the `with` block every head's output is multiplied by its gate before the output
    projection; set a gate entry to 0 to silence a head, or differentiate a loss with respect to
    the gates. Hooks are removed on exit.

    Args:
        model: the model.
        names: attention modules to gate (default: all, see `attention_modules`).
    Yields:
        dict name -> gate tensor [num_heads].
    """
    modules = attention_modules(model) if names is None else \
        {name: _attention_module(model, name)[0] for name in names}
    handles, overridden = [], []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        gates = {}
        for name, module in modules.items():
            adapter = _adapter_for(module)
            layout = adapter.layout(module)
            gate = torch.ones(layout.num_heads, device=_module_device(module),
                              dtype=torch.float32, requires_grad=True)
            target = adapter.gate_target(module)
            if target is None:
                module.forward = partial(_gated_torch_mha_forward, module, gate)
                overridden.append(module)
            else:
                handles.append(target.register_forward_pre_hook(partial(_gate_input_hook, gate, layout.head_dim)))
            gates[name] = gate
        if overridden:  # nn.TransformerEncoderLayer's fused path would bypass the gated forward
            torch.backends.mha.set_fastpath_enabled(False)
        yield gates
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()
        for module in overridden:
            del module.forward


def _weight_norm_importance(model: nn.Module) -> dict[str, torch.Tensor]:
    scores = {}
    for name, module in attention_modules(model).items():
        adapter = _adapter_for(module)
        layout = adapter.layout(module)
        weight = adapter.out_weight(module).float()
        scores[name] = weight.reshape(weight.shape[0], layout.num_heads, layout.head_dim) \
            .pow(2).sum(dim=(0, 2)).sqrt().cpu()
    return scores

def head_importance(model: nn.Module, batches: Optional[Iterable[Any]] = None,
                    loss_fn: Optional[Callable[[nn.Module, Any], torch.Tensor]] = None, *,
                    method: str = "gradient", progress: bool = False) -> dict[str, torch.Tensor]:
    """Importance of every attention head; low = safe to prune.

    method="gradient" (Michel et al. 2019): mean over batches of |dL/d gate_h|, gates of ones
    scaling each head's input to the output projection; the model runs in eval mode (no dropout)
    and parameters' .grad are left untouched. method="weight_norm": L2 norm of each head's columns
    of the output projection (needs no data).

    Args:
        model: model holding supported attention modules (see `attention_modules`).
        batches: iterable of batches (gradient method).
        loss_fn: loss_fn(model, batch) -> scalar loss tensor (gradient method).
        method: "gradient" or "weight_norm".
        progress: show a tqdm bar over batches.
    Returns:
        dict attention-module name -> float32 CPU tensor [num_heads].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not attention_modules(model):
        raise ValueError(f"model has no supported attention modules ({SUPPORTED})")
    if method == "weight_norm":
        return _weight_norm_importance(model)
    if batches is None or loss_fn is None:
        raise ValueError("method='gradient' needs batches and loss_fn (or use method='weight_norm')")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")

    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in grad_flags:  # only the gates need gradients
        p.requires_grad_(False)
    try:
        with head_gates(model) as gates:
            names = list(gates)
            totals = {name: torch.zeros(gates[name].numel()) for name in names}

            def accumulate(loss) -> None:
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError("loss_fn must return a scalar tensor, got "
                                    f"{type(loss).__name__}{tuple(getattr(loss, 'shape', ()))}")
                if not loss.requires_grad:
                    raise ValueError("loss does not depend on any attention head: does loss_fn run the model?")
                grads = torch.autograd.grad(loss.reshape(()), [gates[n] for n in names], allow_unused=True)
                for name, grad in zip(names, grads):
                    if grad is not None:
                        totals[name] += grad.detach().abs().float().cpu()

            # run_batches: eval mode (no dropout), train flags restored, grad enabled for the gates.
            count = run_batches(model, batches, loss_fn, progress=progress, desc="head importance",
                                grad=True, each=accumulate, allow_empty=True)
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    if count == 0:
        raise ValueError("batches is empty")
    return {name: total / count for name, total in totals.items()}
