"""Pruned AND int8-quantized weights in one recipe, ready to pack into a sparse-int8 layout.

- sparsify_quantize(method="sparsegpt"): SparseGPT's joint sparsification + quantization (Frantar &
  Alistarh 2023, sec. 3.5): in the column sweep each kept weight is rounded to the int8 grid as soon
  as its mask is known, and the rounding error is spread over the later columns through H^-1 like the
  pruning error (the OBQ/GPTQ update). Two sweeps per layer: a float SparseGPT sweep fixes the mask
  and the scales, max|w| / 127 per output channel (or group) over the pruned and updated weights,
  i.e. AFTER the mask is known (rounded to the weight dtype, as formats.Int8 does); the second sweep
  starts again from the dense weights, prunes that mask and rounds. Why not scales from the weights
  before the sweep: SparseGPT's updates grow the kept weights past that range on correlated inputs,
  and the clamping then cost more than all the rounding (measured on random layers).
- sparsify_quantize(method="wanda" | "magnitude"): prune, then post-training quantize the kept values
  with the output-MSE scale search of quant/output_mse.py on the pruned model's calibration inputs.
- gradual_sparse_qat: gradual pruning (cubic ramp) with distillation, then quantization-aware
  training with the masks fixed, still distilled.

Every path leaves the model's Linear layers holding q * scale (exact zeros where pruned) and returns
the int8 q and fp32 scales per layer ([out, in] / [out, groups], also for HF Conv1D), from which a
sparse-int8 checkpoint is packed without another rounding. W8A8 evaluation: fake_quantize_inputs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ..formats.int8 import MAX_COLS, check_act
from ..formats.groups import check_group_size
from ..nn.linear_like import is_linear_like, replace_submodule
from .calibration import Forward
from .distill import distill
from .magnitude import magnitude_scores, prune_magnitude
from .masks import PruningMasks
from .quant.calibration import collect_input_stats
from .quant.fake_quant import fake_quantize_per_token
from .quant.output_mse import output_mse_scales
from .quant.qat import prepare_qat
from .quant.weight_quant import column_scales, dequantize_weight, quantize_weight, weight_observer, weight_scales
from .schedule import GradualPruner
from .scores import check_sparsity
from .sparsegpt import check_sparsegpt_options, for_each_hessian, set_rows, sparsegpt_layer
from .targets import LayerFilter, prunable_layers, rows_view
from .wanda import prune_wanda

QMAX = 127  # int8 weights: symmetric narrow range, as formats.Int8
METHODS = ("sparsegpt", "wanda", "magnitude")


@dataclass
class QuantizedWeight:
    """One layer's int8 weight: q int8 [out, in] (0 where pruned), scale fp32 [out, groups]."""
    q: torch.Tensor
    scale: torch.Tensor
    group_size: Optional[int]

    def dequantize(self) -> torch.Tensor:
        """q * scale in fp32, [out, in]."""
        return dequantize_weight(self.q, self.scale, self.group_size)


@dataclass
class SparseQuantResult:
    """What a joint recipe did: per layer the int8 weight and the keep-mask (bool [out, in])."""
    weights: dict[str, QuantizedWeight]
    masks: dict[str, torch.Tensor]
    structure: str
    method: str

    def sparsity(self) -> dict[str, float]:
        """Pruned fraction per layer (from the masks) and "total" over all of them."""
        result = {name: 1.0 - float(m.float().mean()) for name, m in self.masks.items()}
        total = sum(m.numel() for m in self.masks.values())
        result["total"] = 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(1, total)
        return result

    def pack(self, model: nn.Module, act: str = "dynamic") -> list[str]:
        """Swap every recorded nn.Linear of `model` for a CsrInt8Linear (Sparse24Int8Linear for
        2:4) holding exactly the recorded int8 values and scales (``sparsify`` would quantize the
        stored q * scale again on its own max|w| grid). Returns the swapped names; other layer
        types (e.g. HF Conv1D) keep q * scale in float."""
        from ..nn.sparse_int8_linear import CsrInt8Linear, Sparse24Int8Linear  # nn imports ops: only when packing
        check_act(act)
        layer_cls = Sparse24Int8Linear if self.structure == "2:4" else CsrInt8Linear
        modules = dict(model.named_modules())
        swapped = []
        for name, qw in self.weights.items():
            module = modules.get(name)
            if type(module) is not nn.Linear:
                continue
            packed = layer_cls.FORMAT.from_quantized(qw.q.cpu(), qw.scale.float().cpu(), qw.group_size,
                                                     dtype=module.weight.dtype)
            replace_submodule(model, name, layer_cls.from_weight(packed, module.bias, act=act))
            swapped.append(name)
        return swapped


def parse_structure(structure: str, sparsity: Optional[float]) -> tuple[float, Optional[tuple[int, int]]]:
    """(sparsity, n_m or None) from structure "unstructured" or "N:M"; sparsity None = the default
    (0.5 unstructured, 1 - N/M for N:M, where any other value is an error)."""
    if structure == "unstructured":
        return check_sparsity(0.5 if sparsity is None else sparsity), None
    match = re.fullmatch(r"(\d+):(\d+)", structure) if isinstance(structure, str) else None
    if match is None or not 0 < int(match[1]) < int(match[2]):
        raise ValueError(f"structure must be 'unstructured' or 'N:M' with 0 < N < M (e.g. '2:4'), got {structure!r}")
    n, m = int(match[1]), int(match[2])
    if sparsity is not None and abs(sparsity - (1 - n / m)) > 1e-9:
        raise ValueError(f"structure {structure!r} fixes sparsity at {1 - n / m:g}; got sparsity={sparsity!r}")
    return 1 - n / m, (n, m)


def _linear_filter(filter: LayerFilter) -> LayerFilter:
    if filter is not None and not callable(filter):
        raise TypeError("filter must be a callable (name, module) -> bool")
    return lambda name, module: is_linear_like(module) and (filter is None or filter(name, module))


def _check_int8_width(layers: dict[str, nn.Module]) -> None:
    for name, module in layers.items():
        cols = rows_view(module, module.weight).shape[1]
        if cols > MAX_COLS:
            raise ValueError(f"layer {name!r}: in_features {cols} above the int8 limit {MAX_COLS}; "
                             "exclude it with filter")


class _Int8Columns:
    """sparsegpt_layer's round_column: rounds column `col` to its rows' scales, records q."""

    def __init__(self, scale: torch.Tensor, group_size: Optional[int], shape: torch.Size, device):
        self.scale = column_scales(scale, shape[1], group_size).to(device, torch.float64)
        self.q = torch.zeros(shape, dtype=torch.int8, device=device)

    def __call__(self, col: int, values: torch.Tensor) -> torch.Tensor:
        s = self.scale[:, col]
        q = torch.round(values / torch.where(s > 0, s, torch.ones_like(s))).clamp(-QMAX, QMAX)
        self.q[:, col] = q.to(torch.int8)
        return q * s


def _store(module: nn.Module, weight: QuantizedWeight) -> None:
    """The module's weight := q * scale (in its dtype; exact for fp32)."""
    set_rows(module, weight.dequantize().to(device=module.weight.device, dtype=module.weight.dtype))


def sparsify_quantize(model: nn.Module, calibration: Iterable[Any], sparsity: Optional[float] = None,
                      structure: str = "unstructured", method: str = "sparsegpt",
                      group_size: Optional[int] = None, *, act: str = "dynamic", scope: Optional[str] = None,
                      forward: Forward = None, filter: LayerFilter = None, sequential: bool = False,
                      block_size: int = 128, damping: float = 0.01, progress: bool = False) -> SparseQuantResult:
    """Prune and int8-quantize every Linear-like layer of `model` in place (one-shot).

    Args:
        calibration: batches (list / DataLoader / one tensor) fed through forward(model, batch).
        sparsity: fraction pruned (default 0.5); for N:M it is implied (leave None).
        structure: "unstructured" or "N:M" (e.g. "2:4": at most N kept in every M input columns).
        method: "sparsegpt" (joint: rounding inside the sweep, min/max scales), "wanda" or
            "magnitude" (prune, then output-MSE scales for the kept values).
        group_size: None (one scale per output channel) or a multiple of 32 input columns.
        act: "dynamic" (W8A8: the output-MSE search sees the kernels' per-token activation
            rounding) or "none" (weight-only); SparseGPT's sweep ignores it.
        scope: wanda / magnitude comparison group ("row", "layer"; defaults "row" / "layer").
        sequential: sparsegpt / wanda calibrate layer group by layer group on the model changed so far.
        block_size, damping: SparseGPT's (see prune_sparsegpt).
    Returns:
        SparseQuantResult; the model's weights are q * scale with exact zeros where pruned.
    """
    sparsity, n_m = parse_structure(structure, sparsity)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_group_size(group_size)
    check_act(act)
    if method == "sparsegpt":
        check_sparsegpt_options(sparsity, n_m, block_size, damping)
        if scope is not None:
            raise ValueError("scope applies to wanda / magnitude; SparseGPT chooses its masks per block")
    elif method == "magnitude" and sequential:
        raise ValueError("sequential applies to sparsegpt / wanda; magnitude pruning uses no data")
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, (torch.Tensor, Iterable)):
        raise TypeError(f"calibration must be an iterable of batches (or one tensor), "
                        f"got {type(calibration).__name__}")
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches:
        raise ValueError("calibration: no batches given")
    keep = _linear_filter(filter)
    layers = prunable_layers(model, keep, linear_only=True)
    _check_int8_width(layers)
    weights, masks = {}, {}
    if method == "sparsegpt":
        minmax = weight_observer("minmax")

        def prune_and_round(name: str, module: nn.Module, hessian: torch.Tensor) -> None:
            weight = rows_view(module, module.weight.detach())
            pruned, masks[name] = sparsegpt_layer(weight, hessian, sparsity, n_m, block_size, damping)
            scale = weight_scales(pruned, group_size, minmax)
            grid = _Int8Columns(scale, group_size, weight.shape, weight.device)
            sparsegpt_layer(weight, hessian, sparsity, n_m, block_size, damping, round_column=grid, mask=masks[name])
            weights[name] = QuantizedWeight(grid.q.cpu(), scale.cpu(), group_size)
            _store(module, weights[name])

        for_each_hessian(model, batches, prune_and_round, forward, keep, sequential, progress)
        return SparseQuantResult(weights, masks, structure, method)
    if method == "wanda":
        pruned = prune_wanda(model, batches, sparsity, forward, keep, n_m, scope or "row", sequential, progress)
    else:
        pruned = prune_magnitude(model, sparsity, scope or "layer", keep, n_m)
    pruned.remove()  # the weights keep their zeros; quantization keeps them zero (round(0) = 0)
    stats, _ = collect_input_stats(model, layers, batches, dynamic=act == "dynamic", forward=forward,
                                   progress=progress)
    for name, module in layers.items():
        if name not in stats or stats[name].tokens == 0:
            raise ValueError(f"calibration never reached layer {name!r}; exclude it with filter")
        weight = rows_view(module, module.weight.detach())
        scale = output_mse_scales(weight, group_size, stats[name], QMAX)  # rounded to the weight dtype
        weights[name] = QuantizedWeight(quantize_weight(weight, scale, group_size, QMAX).cpu(), scale, group_size)
        masks[name] = rows_view(module, pruned.masks[name]).cpu()
        _store(module, weights[name])
    return SparseQuantResult(weights, masks, structure, method)


def fake_quantize_inputs(model: nn.Module, names: Iterable[str]) -> list:
    """Forward pre-hooks quantizing each named layer's input per token exactly as the int8 kernels
    do (Int8Linear act="dynamic", fp32): with q * scale weights this evaluates W8A8 in float.
    Returns the hook handles (call .remove() on each to undo)."""
    def quantize_input(module, args):
        if not args:
            raise ValueError("fake_quantize_inputs: the layer was called without a positional input")
        return (fake_quantize_per_token(args[0].float()).to(args[0].dtype), *args[1:])
    return [model.get_submodule(name).register_forward_pre_hook(quantize_input) for name in names]


class _Continuing:
    """Iterating it again resumes where the last pass stopped (cycling `loader`): the QAT phase sees
    the batches after the pruning phase's, as one run of `steps` batches would."""

    def __init__(self, loader: Iterable):
        self._batches = self._cycle(loader)

    @staticmethod
    def _cycle(loader: Iterable):
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise ValueError("loader yielded no batches (a generator can be iterated only once; pass a list)")

    def __iter__(self):
        return self._batches


def _check_steps(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def gradual_sparse_qat(model: nn.Module, teacher: nn.Module, loader: Iterable, *, steps: int,
                       sparsity: float = 0.9, prune_steps: Optional[int] = None, frequency: Optional[int] = None,
                       lr: float = 1e-3, T: float = 2.0, alpha: float = 0.5, act: str = "dynamic",
                       group_size: Optional[int] = None, forward: Optional[Callable] = None,
                       labels: Optional[Callable] = None, filter: LayerFilter = None,
                       progress: bool = False) -> SparseQuantResult:
    """Gradual magnitude pruning + knowledge distillation + QAT, in place, for high sparsity.

    Steps 1..prune_steps (default 70% of `steps`): Zhu & Gupta's cubic ramp to `sparsity`
    (GradualPruner, re-pruning every `frequency` steps) while distilling from `teacher`; a weight once
    pruned stays pruned (pruned weights score below every kept one). The remaining steps: masks
    fixed, every pruned layer a QATLinear (weights fake-quantized per channel / group with min/max
    scales and the straight-through estimator; inputs per token when act="dynamic"), still
    distilled. The layers then return to their original modules holding q * scale.
    loader, lr, T, alpha, forward, labels: as compress.distill (forward(model, batch) -> logits).
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    steps = _check_steps(steps, "steps")
    prune_steps = _check_steps(int(0.7 * steps) if prune_steps is None else prune_steps, "prune_steps")
    if prune_steps >= steps:
        raise ValueError(f"prune_steps ({prune_steps}) must be below steps ({steps}): the remaining steps "
                         "are the QAT phase")
    frequency = _check_steps(max(1, prune_steps // 50) if frequency is None else frequency, "frequency")
    check_sparsity(sparsity)
    check_act(act)
    check_group_size(group_size)
    keep = _linear_filter(filter)
    _check_int8_width(prunable_layers(model, keep, linear_only=True))
    if isinstance(loader, (torch.Tensor, str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(f"loader must be an iterable of batches, got {type(loader).__name__}")
    batches = _Continuing(loader)
    pruner: Optional[GradualPruner] = None

    def importance(m: nn.Module) -> dict[str, torch.Tensor]:
        scores = magnitude_scores(m, keep)
        if pruner is None or pruner.masks is None:
            return scores
        held = pruner.masks.masks
        return {name: torch.where(held[name], s, torch.full_like(s, -1.0)) for name, s in scores.items()}

    pruner = GradualPruner(model, sparsity, end_step=prune_steps, frequency=frequency, filter=keep,
                           importance=importance)
    distill(model, teacher, batches, steps=prune_steps, lr=lr, T=T, alpha=alpha, forward=forward,
            labels=labels, on_step=pruner.step, progress=progress)
    pruner.finish(None)
    weight_masks = pruner.masks.masks
    originals = {name: model.get_submodule(name) for name in weight_masks}
    swapped = prepare_qat(model, act=act, group_size=group_size, filter=lambda name, m: name in weight_masks)
    if set(swapped) != set(weight_masks):
        raise ValueError(f"layers {sorted(set(weight_masks) - set(swapped))} cannot be quantized to int8 "
                         "(not a float weight); exclude them with filter")
    masks = {name: rows_view(originals[name], mask).contiguous() for name, mask in weight_masks.items()}
    held = PruningMasks(model, masks)  # QATLinear weights are [out, in]
    try:
        distill(model, teacher, batches, steps=steps - prune_steps, lr=lr, T=T, alpha=alpha, forward=forward,
                labels=labels, progress=progress)
    finally:
        held.remove()
    weights = {}
    for name, original in originals.items():
        qat = model.get_submodule(name)
        w = qat.weight.detach() * masks[name]
        scale = qat.weight_scale()
        weights[name] = QuantizedWeight(quantize_weight(w, scale, group_size, QMAX).cpu(), scale.cpu(), group_size)
        _store(original, weights[name])
        if qat.bias is not None:
            with torch.no_grad():
                original.bias.copy_(qat.bias)
        replace_submodule(model, name, original)
    return SparseQuantResult(weights, {n: m.cpu() for n, m in masks.items()}, "unstructured", "gradual+kd+qat")
