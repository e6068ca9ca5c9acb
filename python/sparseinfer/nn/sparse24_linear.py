"""Sparse24Linear: an nn.Linear whose weight is 2:4 semi-structured sparse."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..compress import prune_2_4
from ..formats.sparse24 import Not24Error, Sparse24
from .canonical_state import CanonicalWeightModule


class Sparse24Linear(CanonicalWeightModule):
    """y = x @ W.T + b with W 2:4 sparse. Inference only: no gradient flows to W."""

    # state_dict keys: the compressed-tensors sparse-24-bitmask layout of this layer's weight
    # (the packed kernel form is rebuilt and validated on load).
    STATE_KEYS = ("shape", "compressed", "bitmask")

    @staticmethod
    def _weight_from_state(shape, compressed, bitmask) -> Sparse24:
        return Sparse24.from_bitmask(compressed, bitmask, shape)

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._set_weight(Sparse24.from_dense(torch.zeros(out_features, in_features, dtype=dtype)))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   prune: bool = False) -> "Sparse24Linear":
        """From a dense [out, in] weight. prune=True applies 2:4 magnitude pruning first;
        otherwise the weight must already be 2:4 (ValueError naming the first bad group)."""
        device = weight.device
        weight = weight.detach().cpu()
        if prune:
            weight = prune_2_4(weight)
        try:
            packed = Sparse24.from_dense(weight)
        except Not24Error as exc:
            raise ValueError(f"weight is not 2:4 sparse: {exc.problem}. Pass prune=True to apply "
                             "2:4 magnitude pruning, or prune it yourself with "
                             "sparseinfer.compress.prune_2_4.") from None
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        layer._set_weight(packed)
        if bias is not None:
            layer.bias.data = bias.detach().to(weight.dtype).clone().cpu()
        return layer.to(device)

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone (not 2:4; min_sparsity does not apply)."""
        problem = Sparse24.first_violation(weight)
        return None if problem is None else f"not 2:4: {problem}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, prune: bool = False) -> "Sparse24Linear":
        return cls.from_dense(linear.weight, linear.bias, prune=prune)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.sparse24_linear(x.contiguous(), self._weight, self.bias)

    # state_dict holds the canonical compressed-tensors layout, never the kernel layout.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        compressed, bitmask, shape = self.weight.to_bitmask()
        destination[prefix + "shape"] = shape
        destination[prefix + "compressed"] = compressed
        destination[prefix + "bitmask"] = bitmask
