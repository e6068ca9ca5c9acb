"""CSRLinear: an nn.Linear whose weight is stored and multiplied as CSR."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..formats.csr import CSR
from .canonical_state import CanonicalWeightModule


class CSRLinear(CanonicalWeightModule):
    """y = x @ W.T + b with W sparse (CSR). W is frozen: gradients flow to x (dX = dY @ W) and to
    the bias if made trainable (bias.requires_grad_()), never to W.

    state_dict holds the compressed-tensors sparse-bitmask arrays of the weight (shape,
    compressed, bitmask, row_offsets); the packed kernel form is rebuilt and validated on load."""

    FORMAT = CSR

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "CSRLinear":
        """From a dense [out, in] weight (exact zeros dropped); the layer lives on its device."""
        return cls.from_weight(CSR.from_dense(weight.detach().cpu()), bias).to(weight.device)

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone, or None to convert it."""
        return f"sparsity below {min_sparsity}" if sparsity < min_sparsity else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "CSRLinear":
        return cls.from_dense(linear.weight.detach(), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.csr_linear(x.contiguous(), self._weight, self.bias)
