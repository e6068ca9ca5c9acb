"""CsrInt8Linear and Sparse24Int8Linear: nn.Linear replacements whose weight is pruned and stores
int8 values, run by the sparse int8 kernels (sparseinfer.ops.sparse_int8_linear)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..formats.int8 import check_act
from ..formats.sparse24 import Sparse24
from ..formats.sparse_int8 import MAX_COLS, CsrInt8, Sparse24Int8
from ..ops.sparse_int8 import sparse_int8_linear
from .canonical_state import CanonicalWeightModule


class _SparseInt8Linear(CanonicalWeightModule):
    """y = x @ W.T + b; act="dynamic" (W8A8: activations quantized per token inside every call,
    exact integer dot products; fastest) or "none" (fp32 math over the stored weights). W is
    frozen: gradients flow to x (straight-through for act="dynamic") and to the bias if made
    trainable. state_dict holds the compressed-tensors composite: the sparsity layout's arrays
    with int8 ``compressed`` values, plus ``weight_scale``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, act: str = "dynamic", group_size: Optional[int] = None):
        check_act(act)
        super().__init__(in_features, out_features, bias, dtype, group_size=group_size)
        self.act = act

    @classmethod
    def state_keys(cls):
        return cls.FORMAT.canonical_keys()

    def _weight_from_state(self, arrays: dict):
        return self.FORMAT.from_canonical(arrays, self.group_size, dtype=self._weight.dtype)

    @classmethod
    def from_weight(cls, weight, bias: Optional[torch.Tensor] = None, act: str = "dynamic"):
        """The layer around an already packed weight (no re-packing)."""
        check_act(act)
        if not isinstance(weight, cls.FORMAT):
            raise TypeError(f"weight must be a {cls.FORMAT.__name__}, got {type(weight).__name__}")
        return super().from_weight(weight, bias, act=act)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: str = "dynamic",
                   group_size: Optional[int] = None):
        """Quantize the kept (non-zero) values of a pruned [out, in] weight to int8."""
        check_act(act)
        return cls.from_weight(cls.FORMAT.from_dense(weight, group_size), bias, act=act)

    @classmethod
    def from_linear(cls, linear: nn.Linear, act: str = "dynamic", group_size: Optional[int] = None):
        return cls.from_dense(linear.weight.detach(), linear.bias, act=act, group_size=group_size)

    @property
    def group_size(self) -> Optional[int]:
        return self._weight.group_size

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone."""
        return f"in_features above {MAX_COLS}" if weight.shape[1] > MAX_COLS else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_int8_linear(x.contiguous(), self._weight, self.bias, self.act)

    def extra_repr(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"sparsity={self._weight.sparsity:.3f}, act={self.act}, {g}, dtype={self._weight.dtype}")


class CsrInt8Linear(_SparseInt8Linear):
    """Unstructured sparsity with int8 values (format ``csr+int8``)."""

    FORMAT = CsrInt8


class Sparse24Int8Linear(_SparseInt8Linear):
    """2:4 sparsity with int8 values (format ``2:4+int8``)."""

    FORMAT = Sparse24Int8

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone (not 2:4, or too wide)."""
        problem = Sparse24.first_violation(weight)
        if problem is not None:
            return f"not 2:4: {problem}"
        return _SparseInt8Linear.conversion_blocker(weight, sparsity, min_sparsity)
