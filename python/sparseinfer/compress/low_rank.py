"""Low-rank factorisation of Linear layers by truncated SVD.

W [out, in] ~= U_r S_r Vh_r, stored as two Linears: x -> (sqrt(S_r) Vh_r) x -> (U_r sqrt(S_r)) (.) + b,
which costs r * (in + out) weights instead of in * out. By Eckart-Young the truncated SVD is the best
rank-r approximation in Frobenius norm, with error sqrt(sum of the dropped sigma^2). Following Denton
et al., "Exploiting Linear Structure Within Convolutional Networks for Efficient Evaluation" (2014).
A layer is only factorised when the result has fewer weights than the dense layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from ..nn.linear_like import is_linear_like, linear_features, linear_weight, replace_submodule
from .targets import LayerFilter

Budget = Union[float, int]


def _check_energy(energy) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    return float(energy)


def _check_budget(param_budget) -> Budget:
    if isinstance(param_budget, bool) or not isinstance(param_budget, (int, float)):
        raise ValueError(f"param_budget must be a float fraction in (0, 1] or a positive int count, "
                         f"got {param_budget!r}")
    if isinstance(param_budget, float) and not 0.0 < param_budget <= 1.0:
        raise ValueError(f"param_budget as a float is a fraction of the dense parameters and must be "
                         f"in (0, 1], got {param_budget}")
    if isinstance(param_budget, int) and param_budget < 1:
        raise ValueError(f"param_budget as an int is a parameter count and must be >= 1, got {param_budget}")
    return param_budget


def _check_rank(rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    return rank


def _one_criterion(**criteria) -> str:
    given = [name for name, value in criteria.items() if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(criteria)}; got "
                         f"{', '.join(given) if given else 'none'}")
    return given[0]


def choose_rank(singular_values: torch.Tensor, in_features: int, out_features: int,
                energy: Optional[float] = None, param_budget: Optional[Budget] = None) -> int:
    """Rank for a truncated SVD of an [out_features, in_features] matrix (give exactly one criterion).

    Args:
        singular_values: 1-D, non-negative, in descending order (as torch.linalg.svdvals returns).
        energy: in (0, 1]; the smallest rank r whose sigma_1..sigma_r hold at least this fraction of
            sum(sigma^2) (at least 1).
        param_budget: the largest rank whose factorised weight count r * (in + out) fits the budget:
            a float in (0, 1] is a fraction of the dense in * out, an int a number of weights.
    Returns:
        The rank, at most len(singular_values); 0 when param_budget fits no rank at all.
    """
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(singular_values, torch.Tensor) or singular_values.dim() != 1 \
            or not singular_values.is_floating_point() or singular_values.numel() == 0:
        raise ValueError("singular_values must be a non-empty 1-D floating tensor")
    if singular_values.numel() > min(in_features, out_features):
        raise ValueError(f"got {singular_values.numel()} singular_values for a {out_features}x{in_features} "
                         f"matrix (at most {min(in_features, out_features)})")
    sigma = singular_values.detach().double().cpu()
    if not bool(torch.isfinite(sigma).all()) or bool((sigma < 0).any()) or bool((sigma[1:] > sigma[:-1]).any()):
        raise ValueError("singular_values must be finite, non-negative and in descending order")
    criterion = _one_criterion(energy=energy, param_budget=param_budget)
    max_rank = sigma.numel()
    if criterion == "energy":
        energy = _check_energy(energy)
        cumulative = torch.cumsum(sigma * sigma, 0)
        if cumulative[-1] == 0:  # zero matrix: any rank holds all of its (zero) energy
            return 1
        fraction = cumulative / cumulative[-1]  # last entry is exactly 1.0
        return min(max_rank, int((fraction < energy).sum()) + 1)
    param_budget = _check_budget(param_budget)
    allowed = (math.floor(param_budget * in_features * out_features) if isinstance(param_budget, float)
               else param_budget)
    return min(max_rank, allowed // (in_features + out_features))


@dataclass
class Factorization:
    """A truncated-SVD replacement for one layer, or why there is none (module is None)."""
    module: Optional[nn.Sequential]
    rank: int
    params_before: int
    params_after: int
    relative_error: float  # ||W - W_r||_F / ||W||_F of the stored factors; nan when skipped
    reason: str = ""


def plan_factorization(linear: nn.Module, rank: Optional[int] = None, energy: Optional[float] = None,
                       param_budget: Optional[Budget] = None) -> Factorization:
    """factorize_linear with the details: the new module (or None and the reason it was refused),
    the rank, parameter counts (weights + bias) and the measured relative Frobenius error."""
    if not is_linear_like(linear):
        raise TypeError(f"linear must be an nn.Linear or Hugging Face Conv1D, got {type(linear).__name__}")
    criterion = _one_criterion(rank=rank, energy=energy, param_budget=param_budget)
    if criterion == "rank":
        _check_rank(rank)
    elif criterion == "energy":
        _check_energy(energy)
    else:
        _check_budget(param_budget)
    out_features, in_features = linear_features(linear)
    bias_params = out_features if linear.bias is not None else 0
    dense_params = in_features * out_features + bias_params
    weight, bias = linear_weight(linear)

    def refuse(chosen: int, reason: str) -> Factorization:
        return Factorization(None, chosen, dense_params, dense_params, float("nan"), reason)

    if not weight.is_floating_point():
        return refuse(0, f"dtype {weight.dtype} is not floating point")
    if weight.numel() == 0:
        return refuse(0, "empty weight")
    if not bool(torch.isfinite(weight).all()):
        return refuse(0, "weight holds inf or nan")
    # SVD needs at least fp32; fp64 weights keep fp64.
    work = weight.to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    u, sigma, vh = torch.linalg.svd(work, full_matrices=False)
    if criterion == "rank":
        chosen = min(rank, sigma.numel())
    else:
        chosen = choose_rank(sigma, in_features, out_features, energy=energy, param_budget=param_budget)
    if chosen == 0:
        return refuse(0, f"param_budget {param_budget} is below one rank's {in_features + out_features} weights")
    low_rank_weights = chosen * (in_features + out_features)
    if low_rank_weights >= in_features * out_features:
        return refuse(chosen, f"rank {chosen} needs {low_rank_weights} weights, not fewer than "
                              f"the dense {in_features * out_features}")
    root = sigma[:chosen].sqrt()
    down = nn.Linear(in_features, chosen, bias=False, device=weight.device, dtype=weight.dtype)
    up = nn.Linear(chosen, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        down.weight.copy_(root[:, None] * vh[:chosen])
        up.weight.copy_(u[:, :chosen] * root[None, :])
        if bias is not None:
            up.bias.copy_(bias)
        approx = up.weight.to(work.dtype) @ down.weight.to(work.dtype)
        norm = torch.linalg.matrix_norm(work)
        error = float(torch.linalg.matrix_norm(work - approx) / norm) if norm > 0 else 0.0
    return Factorization(nn.Sequential(down, up), chosen, dense_params, low_rank_weights + bias_params, error)


def factorize_linear(linear: nn.Module, rank: Optional[int] = None, energy: Optional[float] = None,
                     param_budget: Optional[Budget] = None) -> Optional[nn.Sequential]:
    """Truncated-SVD factorisation of an nn.Linear or Hugging Face Conv1D (give exactly one criterion).

    Args:
        linear: the layer (not modified).
        rank: keep this many singular values (capped at min(in, out)).
        energy / param_budget: choose the rank with choose_rank.
    Returns:
        nn.Sequential(Linear(in, r, bias=False), Linear(r, out, bias)) with weights sqrt(S) Vh and
        U sqrt(S), in the layer's dtype and device; None when the factorised form would not have
        fewer weights than the dense one (use plan_factorization for the reason).
    """
    return plan_factorization(linear, rank=rank, energy=energy, param_budget=param_budget).module


@dataclass
class LowRankLayer:
    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    rank: int
    params_before: int
    params_after: int  # equals params_before when not factorised
    relative_error: float  # nan when not factorised
    factorized: bool
    reason: str = ""


@dataclass
class LowRankReport:
    layers: list[LowRankLayer] = field(default_factory=list)

    @property
    def factorized(self) -> list[LowRankLayer]:
        return [layer for layer in self.layers if layer.factorized]

    @property
    def skipped(self) -> list[LowRankLayer]:
        return [layer for layer in self.layers if not layer.factorized]

    @property
    def params_before(self) -> int:
        return sum(layer.params_before for layer in self.layers)

    @property
    def params_after(self) -> int:
        return sum(layer.params_after for layer in self.layers)

    def __str__(self) -> str:
        lines = [f"{'layer':40s} {'shape':>12s} {'rank':>6s} {'params':>10s} {'after':>10s} {'rel err':>8s}  note"]
        for l in self.layers:
            shape = f"{l.shape[0]}x{l.shape[1]}"
            rank = f"{l.rank:6d}" if l.factorized else f"{'-':>6s}"
            error = f"{l.relative_error:8.4f}" if l.factorized else f"{'-':>8s}"
            lines.append(f"{l.name:40s} {shape:>12s} {rank} {l.params_before:10d} {l.params_after:10d} "
                         f"{error}  {'factorized' if l.factorized else l.reason}")
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        lines.append(f"{len(self.factorized)}/{len(self.layers)} Linear layers factorized; "
                     f"{self.params_before} -> {self.params_after} params ({ratio:.3f}x)")
        return "\n".join(lines)


def low_rank(model: nn.Module, energy: Optional[float] = None, param_budget: Optional[float] = None,
             rank: Optional[int] = None, filter: LayerFilter = None) -> LowRankReport:
    """Replace the nn.Linear / Hugging Face Conv1D layers of `model` by truncated-SVD factorisations,
    in place (give exactly one criterion, applied to every layer).

    Args:
        energy: per layer, the smallest rank keeping this fraction of sum(sigma^2).
        param_budget: per layer, a float fraction in (0, 1] of its dense weights.
        rank: the same rank for every layer (capped at min(in, out)).
        filter(name, module) -> bool: False leaves a layer alone.
    Returns:
        A LowRankReport listing every Linear-like layer: factorised (rank, parameters, relative
        Frobenius error) or skipped with the reason (filter, tied weight, not smaller, dtype).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if is_linear_like(model):
        raise ValueError("model is itself a Linear layer and cannot be replaced in place; "
                         "use factorize_linear(model, ...)")
    if filter is not None and not callable(filter):
        raise TypeError("filter must be a callable (name, module) -> bool")
    criterion = _one_criterion(energy=energy, param_budget=param_budget, rank=rank)
    if criterion == "energy":
        _check_energy(energy)
    elif criterion == "rank":
        _check_rank(rank)
    elif not isinstance(param_budget, float):
        raise ValueError(f"param_budget for low_rank is a float fraction in (0, 1] of each layer's "
                         f"weights, got {param_budget!r}")
    else:
        _check_budget(param_budget)
    # A weight tied to another module (e.g. lm_head and the embedding) stays alive there, so
    # factorising the layer would add parameters instead of removing them.
    uses: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        uses[id(parameter)] = uses.get(id(parameter), 0) + 1

    report = LowRankReport()
    for name, module in list(model.named_modules()):
        if not is_linear_like(module):
            continue
        out_features, in_features = linear_features(module)
        dense = sum(p.numel() for p in module.parameters(recurse=False))
        entry = LowRankLayer(name, (out_features, in_features), 0, dense, dense, float("nan"), False)
        report.layers.append(entry)
        if filter is not None and not filter(name, module):
            entry.reason = "excluded by filter"
            continue
        if uses.get(id(module.weight), 0) > 1:
            entry.reason = "weight is shared (tied) with another module"
            continue
        plan = plan_factorization(module, rank=rank, energy=energy, param_budget=param_budget)
        entry.rank = plan.rank
        if plan.module is None:
            entry.reason = plan.reason
            continue
        entry.params_after, entry.relative_error, entry.factorized = plan.params_after, plan.relative_error, True
        replace_submodule(model, name, plan.module)
    return report
