"""Structured (channel / filter) pruning that physically shrinks Conv and Linear layers.

Importance of an output channel is the L1 or L2 norm of its filter (Li et al. 2017, "Pruning
Filters for Efficient ConvNets") or |gamma| of the BatchNorm that follows the layer (Liu et al. 2017,
"Learning Efficient Convolutional Networks through Network Slimming", trained with
`slimming_penalty`). `prune_channels` removes the least important channels and slices the layer, its
BatchNorms and every consumer (next Conv in_channels, next Linear in_features, also through Flatten),
so the result is a smaller dense model. Dependencies come from torch.fx (see structured_graph.py);
layers whose output reaches something that cannot be followed are left whole, with the reason.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import torch
from torch import nn

from .structured_graph import (BATCHNORM_TYPES, ProducerPlan, analyze_channel_dependencies,
                               eval_mode, following_batchnorm, is_prunable_layer, trace_model)

METHODS = ("l1", "l2", "bn_scale")
SCOPES = ("layer", "global")


@dataclass
class LayerChannels:
    """One Conv/Linear layer: output channels and own parameters before/after pruning."""
    name: str
    kind: str
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    removed: tuple[int, ...] = ()
    reason: str = ""  # why its channels were not pruned ("" when they were considered)

    @property
    def pruned(self) -> bool:
        return not self.reason


@dataclass
class ChannelPruneReport:
    method: str
    scope: str
    amount: float
    params_before: int
    params_after: int
    layers: list[LayerChannels] = field(default_factory=list)

    @property
    def skipped(self) -> dict[str, str]:
        """{layer name: reason} for the layers left unpruned."""
        return {layer.name: layer.reason for layer in self.layers if layer.reason}

    def __str__(self) -> str:
        lines = [f"{'layer':32s} {'kind':8s} {'channels':>13s} {'params':>19s}  note"]
        for l in self.layers:
            channels = f"{l.channels_before} -> {l.channels_after}"
            params = f"{l.params_before} -> {l.params_after}"
            note = f"skipped: {l.reason}" if l.reason else f"pruned {len(l.removed)}"
            lines.append(f"{l.name:32s} {l.kind:8s} {channels:>13s} {params:>19s}  {note}")
        removed = sum(len(l.removed) for l in self.layers)
        fewer = 1 - self.params_after / self.params_before if self.params_before else 0.0
        lines.append(f"{self.method}/{self.scope} amount={self.amount:g}: {removed} channels removed; "
                     f"params {self.params_before} -> {self.params_after} ({fewer:.1%} fewer)")
        return "\n".join(lines)


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_method(method: object) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _filter_norms(module: nn.Module, method: str) -> torch.Tensor:
    filters = module.weight.detach().float().flatten(1)  # one row per output channel
    return filters.abs().sum(1) if method == "l1" else filters.norm(dim=1)


def _bn_scale_scores(model: nn.Module, gm) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(|gamma| of the BatchNorm after each layer, {layer: why it has none})."""
    scores, missing = {}, {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not is_prunable_layer(model.get_submodule(node.target)):
            continue
        bn_name = following_batchnorm(gm, node)
        bn = model.get_submodule(bn_name) if bn_name is not None else None
        if bn is None:
            missing[node.target] = "no BatchNorm follows it (method='bn_scale')"
        elif bn.weight is None:
            missing[node.target] = f"its BatchNorm '{bn_name}' has no scale (affine=False)"
        else:
            scores[node.target] = bn.weight.detach().float().abs()
    return scores, missing


def _require_batchnorm(model: nn.Module) -> None:
    if not any(isinstance(m, BATCHNORM_TYPES) for m in model.modules()):
        raise ValueError("method='bn_scale' needs BatchNorm layers after the pruned layers; model has none")


def channel_importance(model: nn.Module, method: str = "l1") -> dict[str, torch.Tensor]:
    """Importance of each output channel of each Conv/Linear layer (higher = more important).

    Args:
        model: the network.
        method: "l1" / "l2": norm of each filter (weight row); "bn_scale": |gamma| of the BatchNorm
            right after the layer (found with torch.fx; layers without one are absent).
    Returns:
        {layer name: float32 tensor [out_channels]}.
    """
    _check_model(model)
    _check_method(method)
    if method != "bn_scale":
        return {name: _filter_norms(m, method) for name, m in model.named_modules() if is_prunable_layer(m)}
    _require_batchnorm(model)
    scores, _ = _bn_scale_scores(model, trace_model(model))
    if not scores:
        raise ValueError("method='bn_scale': no BatchNorm with a scale directly follows a Conv/Linear layer")
    return scores


def slimming_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """Network Slimming's sparsity term: strength * sum |gamma| over all BatchNorm scales.

    Add it to the loss while training; it pushes unimportant channels' scales to zero so that
    prune_channels(method="bn_scale") can remove them. Returns a scalar tensor that backprops.
    """
    _check_model(model)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    scales = [m.weight for m in model.modules() if isinstance(m, BATCHNORM_TYPES) and m.weight is not None]
    if not scales:
        raise ValueError("slimming_penalty needs BatchNorm layers with a scale (affine=True); model has none")
    return strength * torch.stack([gamma.abs().sum() for gamma in scales]).sum()


def _check_prune_args(model, amount, example_input, method, scope, min_channels, exclude) -> tuple:
    _check_model(model)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction of channels to remove in [0, 1), got {amount!r}")
    _check_method(method)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be an integer >= 1, got {min_channels!r}")
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("example_input must be a tensor or a tuple of tensors (the model's forward "
                        f"arguments), got {type(example_input).__name__}")
    layers = {name for name, m in model.named_modules() if is_prunable_layer(m)}
    excluded = {exclude} if isinstance(exclude, str) else set(exclude or ())
    unknown = sorted(str(name) for name in excluded - layers)
    if unknown:
        raise ValueError(f"exclude names {unknown}, which are not Conv/Linear layers of the model")
    if method == "bn_scale":
        _require_batchnorm(model)
    return tuple(inputs), excluded


def _comparable(scores: torch.Tensor, module: nn.Module, method: str) -> torch.Tensor:
    """Scores on one scale across layers: mean |w| (l1) or RMS (l2) per filter, so layers of
    different fan-in compare; |gamma| already shares one scale (Network Slimming's global threshold)."""
    fan_in = module.weight[0].numel()
    return scores / {"l1": fan_in, "l2": math.sqrt(fan_in), "bn_scale": 1.0}[method]


def _choose_removed(scores: dict[str, torch.Tensor], amount: float, scope: str,
                    min_channels: int) -> dict[str, list[int]]:
    """Channels to remove per layer: the lowest scores (ties: lower index first)."""
    removable = {name: max(0, s.numel() - min_channels) for name, s in scores.items()}
    if scope == "layer":
        return {name: torch.sort(s, stable=True).indices[:min(removable[name], int(amount * s.numel() + 0.5))].tolist()
                for name, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n] for n in names]) if names else torch.zeros(0)
    owner = [(name, c) for name in names for c in range(scores[name].numel())]
    target = int(amount * len(owner) + 0.5)
    removed: dict[str, list[int]] = {name: [] for name in names}
    for index in torch.sort(flat, stable=True).indices.tolist():
        if target == 0:
            break
        name, channel = owner[index]
        if len(removed[name]) < removable[name]:
            removed[name].append(channel)
            target -= 1
    return removed


def _slice(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    old = getattr(module, name)
    if old is None:
        return
    new = old.detach().index_select(dim, keep.to(old.device)).clone()
    setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)


def _shrink(model: nn.Module, plan: ProducerPlan, keep: torch.Tensor) -> None:
    producer = model.get_submodule(plan.name)
    _slice(producer, "weight", 0, keep)
    _slice(producer, "bias", 0, keep)
    setattr(producer, "out_features" if isinstance(producer, nn.Linear) else "out_channels", keep.numel())
    for use in plan.uses:
        columns = (keep[:, None] * use.block + torch.arange(use.block)).flatten()
        module = model.get_submodule(use.name)
        if use.role == "batchnorm":
            for tensor in ("weight", "bias", "running_mean", "running_var"):
                _slice(module, tensor, 0, columns)
            module.num_features = columns.numel()
        else:
            _slice(module, "weight", 1, columns)
            setattr(module, "in_features" if isinstance(module, nn.Linear) else "in_channels", columns.numel())


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prune_channels(model: nn.Module, amount: float, example_input: Union[torch.Tensor, tuple],
                   method: str = "l1", scope: str = "layer", min_channels: int = 1,
                   exclude: Optional[Iterable[str]] = None) -> tuple[nn.Module, ChannelPruneReport]:
    """Remove the least important output channels of Conv/Linear layers and shrink the model.

    Args:
        model: an nn.Module that torch.fx.symbolic_trace can trace; left untouched.
        amount: fraction of channels to remove, in [0, 1): per layer (scope="layer"), or of all
            prunable channels together ranked on comparable scores (scope="global"). Rounded to nearest.
        example_input: a tensor (or tuple of forward arguments) used once, in eval mode, for shapes.
        method: "l1", "l2" (filter norms) or "bn_scale" (|gamma| of the following BatchNorm).
        scope: "layer" or "global".
        min_channels: every pruned layer keeps at least this many channels.
        exclude: names of Conv/Linear layers whose output channels must not be pruned.
    Returns:
        (pruned deep copy with smaller dense layers, ChannelPruneReport). Layers whose output feeds
        the model output or anything that cannot be followed are left whole and listed with why.
    """
    inputs, excluded = _check_prune_args(model, amount, example_input, method, scope, min_channels, exclude)
    pruned = copy.deepcopy(model)
    gm, plans = analyze_channel_dependencies(pruned, inputs)
    reasons = {name: plan.reason for name, plan in plans.items() if plan.reason}
    reasons.update({name: "excluded" for name in excluded})
    if method == "bn_scale":
        scores, missing = _bn_scale_scores(pruned, gm)
        reasons.update({name: why for name, why in missing.items() if name not in reasons})
    else:
        scores = {name: _filter_norms(pruned.get_submodule(name), method) for name in plans}
    candidates = {name: _comparable(scores[name], pruned.get_submodule(name), method)
                  for name in plans if name not in reasons}
    removed = _choose_removed(candidates, float(amount), scope, min_channels)
    before = {name: (plan.channels, _param_count(pruned.get_submodule(name))) for name, plan in plans.items()}
    params_before = _param_count(pruned)
    for name, channels in removed.items():
        if channels:
            keep = torch.tensor(sorted(set(range(plans[name].channels)) - set(channels)), dtype=torch.long)
            _shrink(pruned, plans[name], keep)
    report = ChannelPruneReport(method, scope, float(amount), params_before, _param_count(pruned))
    for name in plans:
        module = pruned.get_submodule(name)
        report.layers.append(LayerChannels(
            name, type(module).__name__, before[name][0], module.weight.shape[0], before[name][1],
            _param_count(module), tuple(sorted(removed.get(name, []))), reasons.get(name, "")))
    _check_runs(pruned, inputs)
    return pruned, report


def _check_runs(model: nn.Module, inputs: tuple) -> None:
    try:
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    except Exception as exc:  # a bug here must not hand back a broken model silently
        raise RuntimeError(f"the pruned model fails on example_input ({exc}); please report this") from exc
