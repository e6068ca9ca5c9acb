"""Symmetric weight quantization in sparseinfer's Int8 layout, shared by PTQ and QAT.

A weight [out, in] gets one scale per output channel, or per (output channel, group of
``group_size`` consecutive input columns), as ``sparseinfer.formats.Int8`` stores it. Scales
come from an observer (min/max, percentile, MSE; see observers.py) and are rounded to the
weight's dtype, as ``Int8.from_dense`` does, so a checkpoint storing them in the model dtype is
lossless. ``q = clamp(round(w / scale), -qmax, qmax)`` with qmax = 2^(bits-1) - 1 (127 at 8 bits).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ...formats.int8 import Int8
from .fake_quant import fake_quantize
from .observers import MinMaxObserver, MSEObserver, Observer, PercentileObserver

WEIGHT_OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def weight_observer(spec: Union[str, Observer], argument: str = "weight_observer",
                    other_names: tuple[str, ...] = ()) -> Observer:
    """The observer template for weights: a name from WEIGHT_OBSERVERS (per output channel,
    observing the whole weight) or an Observer instance (its settings are used; it must be
    symmetric with bits <= 8, and per-channel only along axis 0, the output channels).
    `other_names` are names the caller handles itself (listed in the error message)."""
    if isinstance(spec, str):
        if spec not in WEIGHT_OBSERVERS:
            names = sorted(WEIGHT_OBSERVERS) + list(other_names)
            raise ValueError(f"{argument} must be one of {names} or an Observer, got {spec!r}")
        cls = WEIGHT_OBSERVERS[spec]
        extra = {} if cls is MinMaxObserver else {"max_samples": None}  # weights are bounded data
        return cls(per_channel=True, axis=0, **extra)
    if not isinstance(spec, Observer):
        raise TypeError(f"{argument} must be a name or an Observer, got {type(spec).__name__}")
    if not spec.symmetric:
        raise ValueError(f"{argument}: asymmetric observers are not supported; Int8Linear weights are "
                         "symmetric (zero point 0): use symmetric=True")
    if spec.bits > 8:
        raise ValueError(f"{argument}: bits={spec.bits} does not fit Int8Linear's int8 weights (bits <= 8)")
    if spec.per_channel and spec.axis not in (0, -2):
        raise ValueError(f"{argument}: per-channel weight observers must use axis=0 (output channels), "
                         f"got axis={spec.axis}")
    return spec


def weight_observer_name(template: Observer) -> str:
    """Short name for reports: 'minmax', 'percentile(99.99)', 'mse', or the observer's repr."""
    for name, cls in WEIGHT_OBSERVERS.items():
        if type(template) is cls and template.bits == 8 and template.per_channel:
            return f"percentile({template.percentile:g})" if cls is PercentileObserver else name
    return repr(template)


def num_groups(cols: int, group_size: Optional[int]) -> int:
    return 1 if group_size is None else max(1, -(-cols // group_size))


def weight_scales(weight: torch.Tensor, group_size: Optional[int], template: Observer) -> torch.Tensor:
    """Scales fp32 [out, groups] of a float weight [out, in] from a fresh clone of `template`,
    rounded to the weight's dtype."""
    weight = weight.detach()
    rows, cols = weight.shape
    groups = num_groups(cols, group_size)
    if not template.per_channel:
        observer = template.clone()
        observer.observe(weight)
        scale = observer.qparams()[0].expand(rows, groups)
    elif group_size is None:
        observer = template.clone(axis=0)
        observer.observe(weight)
        scale = observer.qparams()[0].reshape(rows, 1)
    else:
        full = cols // group_size  # whole groups in one batch of rows, the short last group apart
        parts = []
        if full:
            block = weight[:, : full * group_size].reshape(rows * full, group_size)
            observer = template.clone(axis=0)
            observer.observe(block)
            parts.append(observer.qparams()[0].reshape(rows, full))
        if full * group_size < cols:
            observer = template.clone(axis=0)
            observer.observe(weight[:, full * group_size:])
            parts.append(observer.qparams()[0].reshape(rows, 1))
        scale = torch.cat(parts, 1)
    return scale.to(weight.dtype).float().contiguous()


def column_scales(scale: torch.Tensor, cols: int, group_size: Optional[int]) -> torch.Tensor:
    """[out, groups] scales -> [out, cols], each column with its group's scale."""
    if group_size is None:
        return scale.expand(scale.shape[0], cols)
    return scale.repeat_interleave(group_size, dim=1)[:, :cols]


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, group_size: Optional[int],
                    qmax: int) -> torch.Tensor:
    """int8 [out, in] = clamp(round(w / scale), -qmax, qmax) (0 where the scale is 0)."""
    s = column_scales(scale, weight.shape[1], group_size)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(weight.detach().float() / safe).clamp(-qmax, qmax).to(torch.int8)


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    """q int8 [out, in] times its scales, fp32."""
    return q.float() * column_scales(scale, q.shape[1], group_size)


def fake_quantize_weight(weight: torch.Tensor, scale: torch.Tensor, group_size: Optional[int],
                         qmax: int) -> torch.Tensor:
    """Quantize-dequantize in fp32 with the STE gradient (the values Int8 stores, dequantized)."""
    s = column_scales(scale, weight.shape[1], group_size)
    return fake_quantize(weight.float(), s, 0, -qmax, qmax)


def pack_weight(weight: torch.Tensor, group_size: Optional[int], scale: torch.Tensor, qmax: int) -> Int8:
    """The Int8 format object for a float weight [out, in] and its scales [out, groups]."""
    q = quantize_weight(weight, scale, group_size, qmax)
    return Int8.from_quantized(q, scale, group_size, dtype=weight.dtype)
