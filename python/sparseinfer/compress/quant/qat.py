"""Quantization-aware training (QAT; Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference"): train with the int8 rounding in the
forward pass (fake quantization, straight-through gradients), then convert to Int8Linear.

``QATLinear`` keeps a trainable float weight. Its forward fake-quantizes the weight exactly as
the converted Int8 weight will be (symmetric, per output channel or group, scales from the weight
observer on the current weight, rounded to the weight dtype) and, for act="dynamic", the input
per token exactly as the int8 kernel does; it computes in fp32 like the kernel. So
``convert_qat`` yields layers whose output equals the QATLinear's up to fp32 summation order.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..._native import FLOAT_DTYPES
from ...formats.int8 import MAX_COLS, check_act, check_group_size
from ...nn.int8_linear import Int8Linear
from ...nn.linear_like import is_linear_like, linear_weight, replace_submodule
from .fake_quant import fake_quantize_per_token
from .observers import Observer
from .weight_quant import fake_quantize_weight, pack_weight, weight_observer, weight_observer_name, weight_scales


class QATLinear(nn.Module):
    """y = fq(x) @ fq(W)^T + b in fp32, cast back to x's dtype; fq = fake quantization with STE.

    Args:
        in_features, out_features, bias: as nn.Linear.
        act: "dynamic" (fake-quantize inputs per token, as Int8Linear W8A8) or "none".
        group_size: None (per output channel) or a multiple of 32.
        weight_observer: "minmax", "percentile", "mse" or a symmetric Observer (bits <= 8); it
            runs on the current weight at every forward (no state carried between steps).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, act: str = "dynamic",
                 group_size: Optional[int] = None, weight_observer: Union[str, Observer] = "minmax",
                 device=None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        check_act(act)
        check_group_size(group_size)
        self.observer = _resolve_observer(weight_observer)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.act, self.group_size = act, group_size
        reference = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight = reference.weight
        self.bias = reference.bias

    @classmethod
    def from_linear(cls, module: nn.Module, act: str = "dynamic", group_size: Optional[int] = None,
                    weight_observer: Union[str, Observer] = "minmax") -> "QATLinear":
        """A QATLinear starting from an nn.Linear's (or HF Conv1D's) weight and bias (copied)."""
        if not is_linear_like(module):
            raise TypeError(f"module must be an nn.Linear or Hugging Face Conv1D, got {type(module).__name__}")
        weight, bias = linear_weight(module)
        layer = cls(weight.shape[1], weight.shape[0], bias is not None, act, group_size, weight_observer,
                    device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def weight_scale(self) -> torch.Tensor:
        """Scales fp32 [out, groups] of the current weight (no gradient)."""
        return weight_scales(self.weight.detach(), self.group_size, self.observer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = fake_quantize_weight(self.weight, self.weight_scale(), self.group_size, self.observer.qmax)
        x32 = x.float()
        if self.act == "dynamic":
            x32 = fake_quantize_per_token(x32)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x32, weight, bias).to(x.dtype)

    def to_int8(self) -> Int8Linear:
        """The Int8Linear computing this layer's forward with int8 kernels (CPU weights only)."""
        weight = self.weight.detach()
        if weight.device.type != "cpu":
            raise ValueError(f"QATLinear weight is on {weight.device}; Int8Linear runs on the CPU: "
                             "move the model to the CPU before converting")
        if weight.dtype not in FLOAT_DTYPES:
            raise ValueError(f"QATLinear weight dtype {weight.dtype} has no Int8Linear kernel "
                             f"(need one of {FLOAT_DTYPES})")
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("QATLinear weight holds inf or nan")
        packed = pack_weight(weight, self.group_size, self.weight_scale(), self.observer.qmax)
        bias = None if self.bias is None else self.bias.detach()
        return Int8Linear.from_weight(packed, bias, act=self.act)

    def extra_repr(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, act={self.act}, {g}, "
                f"weight_observer={weight_observer_name(self.observer)}")


def _resolve_observer(spec: Union[str, Observer]) -> Observer:
    if spec == "output_mse":
        raise ValueError("weight_observer 'output_mse' needs calibration data: use quantize_ptq "
                         "(QAT observes the weight alone)")
    return weight_observer(spec)


def prepare_qat(model: nn.Module, act: str = "dynamic", group_size: Optional[int] = None,
                weight_observer: Union[str, Observer] = "minmax",
                filter: Optional[Callable[[str, nn.Module], bool]] = None) -> list[str]:
    """Swap every nn.Linear / HF Conv1D of `model` (in place) for a QATLinear starting from its
    weights; train the model as usual afterwards, then call :func:`convert_qat`.

    Args:
        act, group_size, weight_observer: see QATLinear.
        filter: ``filter(name, module) -> bool``; False keeps that layer as it is.
    Returns:
        The names of the swapped layers. Layers with in_features above the int8 limit or a
        non-float weight are left alone.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if is_linear_like(model):
        raise ValueError("model is itself a Linear and cannot be replaced in place; use "
                         "QATLinear.from_linear(layer)")
    check_act(act)
    check_group_size(group_size)
    _resolve_observer(weight_observer)
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be callable (name, module) -> bool, got {type(filter).__name__}")
    chosen = [(name, module) for name, module in model.named_modules()
              if is_linear_like(module) and module.weight.dtype in FLOAT_DTYPES
              and linear_weight(module)[0].shape[1] <= MAX_COLS and (filter is None or filter(name, module))]
    swaps = [(name, QATLinear.from_linear(module, act, group_size, weight_observer).train(module.training))
             for name, module in chosen]
    for name, layer in swaps:
        replace_submodule(model, name, layer)
    return [name for name, _ in swaps]


def convert_qat(model: nn.Module) -> list[str]:
    """Replace every QATLinear of `model` (in place) by the equivalent Int8Linear.

    Returns:
        The names of the converted layers.
    Raises:
        ValueError when the model has no QATLinear or one cannot be converted (not on the CPU,
        non-finite weight); the model is then unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, QATLinear):
        raise ValueError("model is itself a QATLinear and cannot be replaced in place; use model.to_int8()")
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, QATLinear)]
    if not layers:
        raise ValueError("model has no QATLinear layers; call prepare_qat(model) first")
    converted = []
    for name, module in layers:
        try:
            converted.append((name, module.to_int8()))
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from exc
    for name, layer in converted:
        replace_submodule(model, name, layer)
    return [name for name, _ in converted]
