"""The checks every op runs before a pointer leaves Python: tensor type, device, dtype,
contiguity and shape. Each raises ValueError naming the argument."""
from __future__ import annotations

import math
from typing import Optional

import torch


def check_tensor(name: str, t, dtype: torch.dtype, device: Optional[torch.device] = None) -> None:
    """t is a contiguous tensor of `dtype` on `device` (the CPU when device is None or a CPU)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if device is None or device.type == "cpu":
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU (where the weight is), got {t.device}; "
                             "move the weight with .to(device) or the module with .cuda()")
    elif t.device != device:
        raise ValueError(f"{name} must be on {device} (where the weight is), got {t.device}")
    if t.dtype != dtype:
        raise ValueError(f"{name} dtype must be {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def check_shaped(specs, device: Optional[torch.device] = None) -> None:
    """check_tensor plus an exact shape for every (name, tensor, dtype, shape) in specs."""
    for name, t, dtype, shape in specs:
        check_tensor(name, t, dtype, device)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


def check_bias(bias, dtype: torch.dtype, rows: int, device: Optional[torch.device] = None) -> None:
    """bias is None or a contiguous [rows] tensor of dtype (on device)."""
    if bias is not None:
        check_tensor("bias", bias, dtype, device)
        if bias.shape != (rows,):
            raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")


def check_weight(weight, format_cls) -> None:
    if not isinstance(weight, format_cls):
        raise ValueError(f"weight must be a sparseinfer.formats.{format_cls.__name__}, "
                         f"got {type(weight).__name__}")


def check_activation(x, bias, weight) -> None:
    """x [..., in] and optional bias [out] against a format object (same dtype and device)."""
    check_tensor("x", x, weight.dtype, weight.device)
    if x.dim() < 1 or x.shape[-1] != weight.cols:
        raise ValueError(f"x must have shape [..., {weight.cols}] (in_features), got {tuple(x.shape)}")
    check_bias(bias, weight.dtype, weight.rows, weight.device)


def check_raw_x(x, dtype: torch.dtype, cols: int, device: Optional[torch.device] = None) -> None:
    """x of a raw custom op: a contiguous [m, cols] tensor of dtype."""
    check_tensor("x", x, dtype, device)
    if x.dim() != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be [m, {cols}], got {tuple(x.shape)}")


def check_raw_dims(rows: int, cols: int) -> None:
    if rows < 0 or cols < 0:
        raise ValueError(f"rows/cols must be non-negative, got {rows}, {cols}")


def check_values_dtype(values, allowed: tuple) -> None:
    if values.dtype not in allowed:
        raise ValueError(f"values dtype must be one of {allowed}, got {values.dtype}")


def ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def as_tokens(x: torch.Tensor, cols: int) -> torch.Tensor:
    """x [..., cols] as [m, cols] (2-D x as it is: no reshape cost)."""
    return x if x.dim() == 2 else x.reshape(math.prod(x.shape[:-1]), cols)


def on_tokens(x: torch.Tensor, weight, run) -> torch.Tensor:
    """run(x2 [m, in]) -> [m, out] applied to x [..., in]; returns [..., out]."""
    y = run(as_tokens(x, weight.cols))
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.rows)


def cuda_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream
