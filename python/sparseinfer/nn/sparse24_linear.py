"""Sparse24Linear: an nn.Linear whose weight is 2:4 semi-structured sparse."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..formats.n_m import prune_2_4
from ..formats.sparse24 import Not24Error, Sparse24
from .canonical_state import CanonicalWeightModule


class Sparse24Linear(CanonicalWeightModule):
    """y = x @ W.T + b with W 2:4 sparse. W is frozen: gradients flow to x (dX = dY @ W) and to
    the bias if made trainable (bias.requires_grad_()), never to W.

    state_dict holds the compressed-tensors sparse-24-bitmask arrays of the weight (shape,
    compressed, bitmask); the packed kernel form is rebuilt and validated on load."""

    FORMAT = Sparse24

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
        return cls.from_weight(packed, bias).to(device)

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
