"""CSRLinear: an nn.Linear whose weight is stored and multiplied as CSR."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..formats.csr import CSR
from .canonical_state import CanonicalWeightModule


class CSRLinear(CanonicalWeightModule):
    """y = x @ W.T + b with W sparse (CSR). Inference only: no gradient flows to W."""

    # state_dict keys: the compressed-tensors sparse-bitmask layout of this layer's weight (the
    # packed kernel form is rebuilt and validated on load).
    STATE_KEYS = ("shape", "compressed", "bitmask", "row_offsets")

    @staticmethod
    def _weight_from_state(shape, compressed, bitmask, row_offsets) -> CSR:
        return CSR.from_bitmask(compressed, bitmask, shape, row_offsets)

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._set_weight(CSR.from_dense(torch.zeros(out_features, in_features, dtype=dtype)))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "CSRLinear":
        """From a dense [out, in] weight (exact zeros dropped); the layer lives on its device."""
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        if bias is not None:
            layer.bias.data = bias.detach().to(weight.dtype).clone().cpu()
        layer._set_weight(CSR.from_dense(weight.cpu()))
        return layer.to(weight.device)

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone, or None to convert it."""
        return f"sparsity below {min_sparsity}" if sparsity < min_sparsity else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "CSRLinear":
        return cls.from_dense(linear.weight.detach(), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.csr_linear(x.contiguous(), self._weight, self.bias)

    # state_dict holds the canonical sparse-bitmask arrays, never the kernel layout.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        compressed, bitmask, row_offsets, shape = self.weight.to_bitmask()
        destination[prefix + "shape"] = shape
        destination[prefix + "compressed"] = compressed
        destination[prefix + "bitmask"] = bitmask
        destination[prefix + "row_offsets"] = row_offsets
