"""Post-training quantization (PTQ) with calibration: every nn.Linear (and Hugging Face Conv1D)
becomes a ``sparseinfer.Int8Linear`` with symmetric int8 weights, W8A8 with dynamic per-token
activations (act="dynamic") or weight-only (act="none").

Weight scales come from a weight observer (min/max, percentile, MSE; Nagel et al. 2021, "A White
Paper on Neural Network Quantization", sec. 3.4) or, with ``weight_observer="output_mse"``, from
an activation-aware search minimizing each layer's output error on the calibration data (AWQ's
clip search, Lin et al. 2023; see output_mse.py). The int8 kernels quantize activations
dynamically, so there is no static activation scale to calibrate: calibration measures each
layer's input statistics, which drive output_mse and the report's per-layer output error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from ..._native import FLOAT_DTYPES
from ...formats.int8 import MAX_COLS, Int8, check_act, check_group_size
from ...nn.int8_linear import Int8Linear
from ...nn.linear_like import is_linear_like, linear_weight, replace_submodule
from .calibration import collect_input_stats
from .observers import Observer
from .output_mse import output_mse_scales, relative_output_error
from .weight_quant import dequantize_weight, quantize_weight, weight_observer, weight_observer_name, weight_scales

WEIGHT_QMAX = 127


@dataclass
class PTQLayerReport:
    """One layer: quantized (observer, scale range, calibration output error) or why not."""
    name: str
    kind: str                      # module class name
    shape: tuple[int, int]         # (out, in); (0, 0) for non-Linear modules
    quantized: bool
    observer: str = ""
    scale_min: float = float("nan")
    scale_max: float = float("nan")
    rel_error: float = float("nan")  # ||Y_int8 - Y_float||_F / ||Y_float||_F on calibration data
    reason: str = ""


@dataclass
class PTQReport:
    act: str
    group_size: Optional[int]
    batches: int = 0
    layers: list[PTQLayerReport] = field(default_factory=list)

    @property
    def quantized(self) -> list[PTQLayerReport]:
        return [layer for layer in self.layers if layer.quantized]

    @property
    def skipped(self) -> list[PTQLayerReport]:
        return [layer for layer in self.layers if not layer.quantized]

    def __str__(self) -> str:
        lines = [f"{'layer':36s} {'shape':>11s} {'observer':>17s} {'scale min':>10s} {'scale max':>10s} "
                 f"{'rel err':>9s}  note"]
        for l in self.layers:
            shape = f"{l.shape[0]}x{l.shape[1]}" if l.shape != (0, 0) else l.kind
            if l.quantized:
                lines.append(f"{l.name:36s} {shape:>11s} {l.observer:>17s} {l.scale_min:10.3g} "
                             f"{l.scale_max:10.3g} {l.rel_error:9.2e}  int8")
            else:
                lines.append(f"{l.name:36s} {shape:>11s} {'-':>17s} {'-':>10s} {'-':>10s} {'-':>9s}  "
                             f"skipped: {l.reason}")
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        lines.append(f"{len(self.quantized)}/{len(self.layers)} layers -> Int8Linear (act={self.act}, {g}), "
                     f"calibrated on {self.batches} batches")
        return "\n".join(lines)


def _skip_reason(name: str, module: nn.Module, filter) -> Optional[str]:
    weight, _ = linear_weight(module)
    if weight.device.type != "cpu":
        return f"on {weight.device} (Int8Linear runs on the CPU for now)"
    if weight.dtype not in FLOAT_DTYPES:
        return f"dtype {weight.dtype} not supported (need one of {FLOAT_DTYPES})"
    if weight.shape[1] > MAX_COLS:
        return f"in_features {weight.shape[1]} above {MAX_COLS}"
    if filter is not None and not filter(name, module):
        return "excluded by filter"
    return None


def _untouched_reason(module: nn.Module) -> Optional[str]:
    """Why a weighted module that is not a plain Linear stays float (None: not worth listing)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"{type(module).__name__} left in float (only Linear layers are quantized)"
    if isinstance(module, nn.Linear):
        return (f"{type(module).__name__} is an nn.Linear subclass (its parent may use the weight "
                "directly); left in float")
    return None


def _validate(model, calibration, act, weight_observer_spec, group_size, filter, forward, progress):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if is_linear_like(model):
        raise ValueError("model is itself a Linear and cannot be replaced in place; wrap it in a "
                         "container (e.g. nn.Sequential(layer))")
    if calibration is None or isinstance(calibration, (str, bytes)) or not (
            isinstance(calibration, torch.Tensor) or isinstance(calibration, Iterable)):
        raise TypeError(f"calibration must be an iterable of batches (or one tensor), got "
                        f"{type(calibration).__name__}")
    check_act(act)
    check_group_size(group_size)
    template = None if weight_observer_spec == "output_mse" else weight_observer(weight_observer_spec, other_names=("output_mse",))
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be callable (name, module) -> bool, got {type(filter).__name__}")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be callable (model, batch), got {type(forward).__name__}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    return template


def quantize_ptq(model: nn.Module, calibration: Union[Iterable[Any], torch.Tensor], *, act: str = "dynamic",
                 weight_observer: Union[str, Observer] = "minmax", group_size: Optional[int] = None,
                 filter: Optional[Callable[[str, nn.Module], bool]] = None,
                 forward: Optional[Callable[[nn.Module, Any], Any]] = None, progress: bool = False) -> PTQReport:
    """Quantize `model` in place: calibrate, then replace each nn.Linear / HF Conv1D by Int8Linear.

    Args:
        model: the float model (CPU layers are quantized; others are reported as skipped).
        calibration: iterable of batches (DataLoader, list, generator) or a single tensor batch.
            A batch goes through ``forward(model, batch)``; default: ``model(batch)``,
            ``model(*batch)`` for a tuple/list, ``model(**batch)`` for a dict.
        act: "dynamic" (W8A8, per-token activations quantized in the kernel) or "none" (weight-only).
        weight_observer: "minmax", "percentile" (99.99), "mse", "output_mse" (scales minimizing
            the layer output error on calibration data), or a symmetric Observer instance
            (bits <= 8) whose settings are used per output channel / group.
        group_size: None (one scale per output channel) or a multiple of 32 input columns.
        filter: ``filter(name, module) -> bool``; False keeps that layer float.
        progress: show a tqdm bar over the calibration batches.
    Returns:
        A PTQReport listing every Linear (quantized, with its observer, scale range and relative
        output error on the calibration data, or why it was skipped) and every Conv / Linear
        subclass left in float.
    Raises:
        ValueError / TypeError on a bad argument or when calibration yields no batch; the model is
        then unchanged (it is also unchanged if a calibration batch raises).
    """
    template = _validate(model, calibration, act, weight_observer, group_size, filter, forward, progress)
    observer_name = "output_mse" if template is None else weight_observer_name(template)
    report = PTQReport(act, group_size)
    targets: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if is_linear_like(module):
            weight, _ = linear_weight(module)
            entry = PTQLayerReport(name, type(module).__name__, tuple(weight.shape), False)
            reason = _skip_reason(name, module, filter)
            if reason is None and not bool(torch.isfinite(weight).all()):
                raise ValueError(f"layer {name!r}: weight holds inf or nan")
            if reason is None:
                targets[name] = module
            entry.reason = reason or ""
            report.layers.append(entry)
        elif (reason := _untouched_reason(module)) is not None:
            report.layers.append(PTQLayerReport(name, type(module).__name__, (0, 0), False, reason=reason))
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    stats, report.batches = collect_input_stats(model, targets, calibration, dynamic=act == "dynamic",
                                                forward=forward, progress=progress)
    if report.batches == 0:
        raise ValueError("calibration yielded no batches; pass at least one batch")

    # Quantize every layer first, swap only once all succeeded: no half-converted model.
    swaps: list[tuple[str, Int8Linear]] = []
    for entry in report.layers:
        if entry.name not in targets:
            continue
        layer_stats = stats.get(entry.name)
        if layer_stats is None or layer_stats.tokens == 0:
            entry.reason = "never called during calibration"
            continue
        weight, bias = linear_weight(targets[entry.name])
        try:
            if template is None:
                scale = output_mse_scales(weight, group_size, layer_stats, WEIGHT_QMAX)
            else:
                scale = weight_scales(weight, group_size, template)
        except ValueError as exc:
            raise ValueError(f"layer {entry.name!r}: {exc}") from exc
        qmax = WEIGHT_QMAX if template is None else template.qmax
        q = quantize_weight(weight, scale, group_size, qmax)
        packed = Int8.from_quantized(q, scale, group_size, dtype=weight.dtype)
        swaps.append((entry.name, Int8Linear.from_weight(packed, bias, act=act)))
        entry.quantized, entry.observer = True, observer_name
        entry.scale_min, entry.scale_max = float(scale.min()), float(scale.max())
        entry.rel_error = relative_output_error(weight, dequantize_weight(q, scale, group_size), bias, layer_stats)
    for name, layer in swaps:
        replace_submodule(model, name, layer)
    return report
