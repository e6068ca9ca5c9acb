"""CSRLinear: an nn.Linear whose weight is stored and multiplied as CSR."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..formats.csr import CSR, _Packed
from .canonical_state import CanonicalWeightModule

_PACKED_FIELDS = ("values", "local_idx", "counts", "block_offsets", "block_nnz_prefix", "bitmask")


class CSRLinear(CanonicalWeightModule):
    """y = x @ W.T + b with W sparse (CSR). Inference only: no gradient flows to W."""

    # state_dict keys: canonical CSR, portable; the packed form is rebuilt and validated on load.
    STATE_KEYS = ("weight_shape", "weight_indptr", "weight_indices", "weight_values")

    @staticmethod
    def _weight_from_state(shape, indptr, indices, values) -> CSR:
        return CSR.from_csr(indptr, indices, values, shape)

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._set_weight(CSR.from_dense(torch.zeros(out_features, in_features, dtype=dtype)))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "CSRLinear":
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
        layer._set_weight(CSR.from_dense(weight))
        if bias is not None:
            layer.bias.data = bias.detach().to(weight.dtype).clone()
        return layer

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone, or None to convert it."""
        return f"sparsity below {min_sparsity}" if sparsity < min_sparsity else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "CSRLinear":
        return cls.from_dense(linear.weight.detach(), linear.bias)

    def _set_weight(self, csr: CSR) -> None:
        self.nnz = csr.nnz
        for name in _PACKED_FIELDS:
            self.register_buffer(f"_csr_{name}", getattr(csr.packed, name), persistent=False)

    @property
    def weight(self) -> CSR:
        """The CSR weight, viewed over this module's (possibly moved/cast) buffers."""
        packed = _Packed(*(getattr(self, f"_csr_{name}") for name in _PACKED_FIELDS))
        return CSR((self.out_features, self.in_features), self.nnz, packed)

    @property
    def sparsity(self) -> float:
        return self.weight.sparsity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.csr_linear(x.contiguous(), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={self.sparsity:.3f}, "
                f"dtype={self.weight.dtype}")

    # state_dict holds canonical CSR arrays, never the kernel layout.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        indptr, indices, values = self.weight.to_csr_arrays()
        destination[prefix + "weight_shape"] = torch.tensor([self.out_features, self.in_features])
        destination[prefix + "weight_indptr"] = indptr
        destination[prefix + "weight_indices"] = indices.to(torch.int32)
        destination[prefix + "weight_values"] = values
