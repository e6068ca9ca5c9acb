"""Modules that compute y = x W^T + b: torch's nn.Linear and Hugging Face's Conv1D (GPT-2 style,
which stores W transposed as [in, out])."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (y = x @ W + b with W [in, out]); matched by name so transformers
    stays optional."""
    cls = type(module)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2)


def is_linear_like(module: nn.Module) -> bool:
    return type(module) is nn.Linear or is_hf_conv1d(module)


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight [out, in], bias or None) of an nn.Linear or HF Conv1D, detached."""
    weight = module.weight.detach()
    if is_hf_conv1d(module):
        weight = weight.t().contiguous()
    bias = module.bias.detach() if module.bias is not None else None
    return weight, bias


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an nn.Linear or HF Conv1D (works on meta tensors)."""
    rows, cols = module.weight.shape
    return (cols, rows) if is_hf_conv1d(module) else (rows, cols)


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at dotted path `name` of `model`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
