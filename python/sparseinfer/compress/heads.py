"""Attention-head importance and structured head pruning.

Importance follows Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?": each
head h gets a gate xi_h = 1 that scales its slice of the input of the attention output projection;
the importance of h is the expected |dL/dxi_h| over data. A data-free alternative ("weight_norm")
scores a head by the norm of its output-projection columns.

Pruning physically removes a head: its rows of the q/k/v projections and its columns of the output
projection, so the model is smaller and faster, and computes exactly what the unpruned model
computes with that head's gate set to 0.

Supported attention modules (matched by class, so transformers stays optional):
  - torch `nn.MultiheadAttention`, replaced on pruning by `PrunedMultiheadAttention` (nn.MHA needs
    embed_dim == num_heads * head_dim, so it cannot hold fewer heads);
  - transformers `LlamaAttention` (grouped-query attention: only whole key/value groups are pruned);
  - transformers `GPT2Attention` (self-attention) and BERT-style `*Attention` (`.self` + `.output`),
    pruned with their own `prune_heads`, with `config.pruned_heads` kept in step so
    `save_pretrained` / `from_pretrained` round-trips.
Head indices always refer to a module's *current* heads 0..num_heads-1.

This module holds pruning (`prune_heads`, `prune_heads_by_importance`); the pieces live in
`pruned_mha` (PrunedMultiheadAttention and the written-out attention math), `attention_adapters`
(per-architecture layouts and head removal) and `head_gates` (finding attention modules, gates,
importance), whose public names are re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn

# Public names of the split-out modules are re-exported (see __all__) so that
# `from sparseinfer.compress.heads import X` keeps working.
from .attention_adapters import SUPPORTED, _adapter_for
from .head_gates import METHODS, _attention_module, attention_modules, head_counts, head_gates, head_importance
from .pruned_mha import PrunedMultiheadAttention

__all__ = [
    "METHODS", "SCOPES", "SUPPORTED", "HeadPruningReport", "PrunedMultiheadAttention", "attention_modules",
    "head_counts", "head_gates", "head_importance", "prune_heads", "prune_heads_by_importance",
]

SCOPES = ("global", "layer")


def _validate_heads(model: nn.Module, heads: Mapping[str, Iterable[int]]):
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads must be a dict name -> list of head indices, got {type(heads).__name__}")
    plan = []
    for name, indices in heads.items():
        module, adapter = _attention_module(model, name)
        layout = adapter.layout(module)
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
            raise TypeError(f"heads[{name!r}] must be a list of head indices, got {indices!r}")
        indices = list(indices)
        for h in indices:
            if isinstance(h, bool) or not isinstance(h, int):
                raise TypeError(f"heads[{name!r}] holds {h!r}; head indices must be ints")
            if not 0 <= h < layout.num_heads:
                raise ValueError(f"head index {h} out of range for {name!r}, which has {layout.num_heads} heads")
        if len(set(indices)) != len(indices):
            raise ValueError(f"heads[{name!r}] repeats an index: {indices}")
        if not indices:
            continue
        if len(indices) == layout.num_heads:
            raise ValueError(f"heads[{name!r}] would remove all {layout.num_heads} heads; keep at least one")
        if layout.group_size > 1:
            groups = {h // layout.group_size for h in indices}
            whole = {g * layout.group_size + i for g in groups for i in range(layout.group_size)}
            if whole != set(indices):
                raise ValueError(
                    f"{name!r} uses grouped-query attention ({layout.group_size} query heads share each "
                    f"key/value head); prune whole groups: {sorted(whole)} instead of {sorted(indices)}")
        adapter.check_prunable(name, module)
        plan.append((name, module, adapter, sorted(indices)))
    return plan


def prune_heads(model: nn.Module, heads: Mapping[str, Iterable[int]]) -> None:
    """Remove attention heads in place.

    Cuts the heads' rows of the q/k/v projections and columns of the output projection (and
    replaces nn.MultiheadAttention by PrunedMultiheadAttention). Everything is validated before
    the model is touched.

    Args:
        model: model holding the attention modules.
        heads: dict attention-module name (see `attention_modules`) -> current head indices to
            remove. Grouped-query Llama attention takes only whole key/value groups.
    Raises:
        ValueError: unknown name, index out of range or repeated, all heads of a module, partial
            GQA group. TypeError: unsupported module type or already-swapped projections.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, module, adapter, indices in _validate_heads(model, heads):
        adapter.prune(model, name, module, indices)


@dataclass
class HeadPruningReport:
    """What prune_heads_by_importance removed."""
    pruned: dict[str, list[int]]
    heads_before: dict[str, int]
    heads_after: dict[str, int]
    params_before: int
    params_after: int
    scope: str = "global"
    amount: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def heads_removed(self) -> int:
        return sum(self.heads_before.values()) - sum(self.heads_after.values())

    def __str__(self) -> str:
        width = max([len("module")] + [len(n) for n in self.heads_before])
        lines = [f"{'module':{width}s} {'before':>6s} {'after':>6s}  pruned heads"]
        for name, before in self.heads_before.items():
            lines.append(f"{name:{width}s} {before:6d} {self.heads_after[name]:6d}  {self.pruned.get(name, [])}")
        total_before, total_after = sum(self.heads_before.values()), sum(self.heads_after.values())
        lines.append(f"heads {total_before} -> {total_after} ({self.heads_removed} removed, scope={self.scope}, "
                     f"amount={self.amount:g}); params {self.params_before:,} -> {self.params_after:,} "
                     f"({1 - self.params_after / max(self.params_before, 1):.1%} fewer)")
        lines.extend(self.notes)
        return "\n".join(lines)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _select_heads(units: list[tuple[float, str, int, int]], budget: dict[str, int], target: int) -> dict[str, list[int]]:
    """Greedy: lowest-scoring units first, each within its module's budget, up to `target` heads."""
    chosen: dict[str, list[int]] = {}
    taken = 0
    for _, name, first, size in sorted(units, key=lambda u: u[0]):
        if taken == target:
            break
        if taken + size <= target and budget[name] >= size:
            chosen.setdefault(name, []).extend(range(first, first + size))
            budget[name] -= size
            taken += size
    return {name: sorted(h) for name, h in chosen.items()}


def prune_heads_by_importance(model: nn.Module, scores: Mapping[str, torch.Tensor], amount: float, *,
                              scope: str = "global", min_heads: int = 1,
                              normalize: bool = True) -> HeadPruningReport:
    """Prune the lowest-scoring heads (scores from `head_importance`).

    Args:
        model: the model; only modules named in `scores` are considered.
        scores: dict attention-module name -> tensor [num_heads] (higher = more important).
        amount: fraction of the considered heads to remove, in [0, 1).
        scope: "global" ranks all heads together (each module's scores divided by their L2 norm
            first when `normalize`, as in Michel et al.); "layer" removes `amount` of every module.
        min_heads: heads every module keeps at least.
        normalize: per-module L2 normalisation for scope="global".
    Returns:
        HeadPruningReport (heads and parameters before/after; str() is a table).
    With grouped-query attention a key/value group is the unit (scored by its heads' mean) and the
    number removed is the closest reachable without exceeding the target.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(min_heads, bool) or not isinstance(min_heads, int) or min_heads < 1:
        raise ValueError(f"min_heads must be an int >= 1, got {min_heads!r}")
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty dict name -> tensor [num_heads] (see head_importance)")
    layouts, units, budget, totals = {}, [], {}, 0
    for name, score in scores.items():
        module, adapter = _attention_module(model, name)
        layout = adapter.layout(module)
        if not isinstance(score, torch.Tensor) or score.shape != (layout.num_heads,):
            raise ValueError(f"scores[{name!r}] must be a tensor of shape ({layout.num_heads},), got "
                             f"{tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
        score = score.detach().double().cpu()
        if not bool(torch.isfinite(score).all()):
            raise ValueError(f"scores[{name!r}] holds inf or nan")
        if normalize and scope == "global" and score.norm() > 0:
            score = score / score.norm()
        layouts[name] = layout
        group = layout.group_size
        kept_units = -(-min_heads // group)
        budget[name] = max(layout.num_heads - kept_units * group, 0)
        totals += layout.num_heads
        units.extend((float(score[u * group:(u + 1) * group].mean()), name, u * group, group)
                     for u in range(layout.num_heads // group))

    if scope == "global":
        chosen = _select_heads(units, budget, round(amount * totals))
    else:
        chosen = {}
        for name, layout in layouts.items():
            own = [u for u in units if u[1] == name]
            chosen.update(_select_heads(own, dict(budget), round(amount * layout.num_heads)))
    heads_before = {name: layout.num_heads for name, layout in layouts.items()}
    params_before = _param_count(model)
    prune_heads(model, chosen)
    heads_after = {name: _adapter_for(model.get_submodule(name)).layout(model.get_submodule(name)).num_heads
                   for name in layouts}
    removed, target = sum(len(h) for h in chosen.values()), round(amount * totals)
    notes = [f"note: removed {removed} of the {target} heads asked (min_heads={min_heads} or whole GQA groups)"] \
        if scope == "global" and removed < target else []
    return HeadPruningReport(pruned=chosen, heads_before=heads_before, heads_after=heads_after,
                             params_before=params_before, params_after=_param_count(model),
                             scope=scope, amount=float(amount), notes=notes)
