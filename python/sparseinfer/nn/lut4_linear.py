"""Int4Linear and CodebookLinear: nn.Linear replacements whose weight is 4-bit indices into
per-(row, group) tables, run by the lut4 kernels (sparseinfer.ops.lut4_linear)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..formats.codebook import Codebook
from ..formats.int4 import Int4
from ..formats.lut4 import MAX_COLS
from ..formats.lut4_weight import check_act
from ..ops.lut4 import lut4_linear
from .canonical_state import CanonicalWeightModule


class _Lut4Linear(CanonicalWeightModule):
    """y = x @ W.T + b; act="dynamic" (W4A8: activations quantized per token inside every call,
    integer dot products; fastest) or "none" (fp32 math on the exact weights). W is frozen:
    gradients flow to x (straight-through for act="dynamic") and to the bias if made trainable."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, act: str = "dynamic", **pack_options):
        check_act(act)
        super().__init__(in_features, out_features, bias, dtype, **pack_options)
        self.act = act

    @classmethod
    def from_weight(cls, weight, bias: Optional[torch.Tensor] = None, act: str = "dynamic"):
        """The layer around an already packed weight (no re-packing)."""
        check_act(act)
        if not isinstance(weight, cls.FORMAT):
            raise TypeError(f"weight must be a {cls.FORMAT.__name__}, got {type(weight).__name__}")
        return super().from_weight(weight, bias, act=act)

    @classmethod
    def from_linear(cls, linear: nn.Linear, act: str = "dynamic", **pack_options):
        return cls.from_dense(linear.weight.detach(), linear.bias, act=act, **pack_options)

    @property
    def group_size(self) -> Optional[int]:
        return self._weight.group_size

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone."""
        return f"in_features above {MAX_COLS}" if weight.shape[1] > MAX_COLS else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lut4_linear(x.contiguous(), self._weight, self.bias, self.act)

    def extra_repr(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, act={self.act}, {g}, dtype={self._weight.dtype}")


class Int4Linear(_Lut4Linear):
    """4-bit uniform weights (per-group scales, symmetric or asymmetric). state_dict holds the
    compressed-tensors pack-quantized arrays (weight_packed, weight_scale, weight_shape,
    weight_zero_point); the packed form is rebuilt on load."""

    FORMAT = Int4

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, act: str = "dynamic", group_size: Optional[int] = 128,
                 symmetric: bool = True):
        super().__init__(in_features, out_features, bias, dtype, act, group_size=group_size, symmetric=symmetric)

    @property
    def symmetric(self) -> bool:
        return self._weight.symmetric

    def _weight_from_state(self, arrays: dict) -> Int4:
        return Int4.from_canonical(arrays, self.group_size, dtype=self._weight.dtype)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: str = "dynamic",
                   group_size: Optional[int] = 128, symmetric: bool = True) -> "Int4Linear":
        """Quantize a dense [out, in] weight to 4 bits (see sparseinfer.formats.Int4)."""
        check_act(act)
        return cls.from_weight(Int4.from_dense(weight, group_size, symmetric), bias, act=act)


class CodebookLinear(_Lut4Linear):
    """Shared weights: 4-bit indices into 16 values per output channel (or group). state_dict
    holds weight_packed, weight_codebook and weight_shape."""

    FORMAT = Codebook

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, act: str = "dynamic", group_size: Optional[int] = None):
        super().__init__(in_features, out_features, bias, dtype, act, group_size=group_size)

    def _weight_from_state(self, arrays: dict) -> Codebook:
        return Codebook.from_canonical(arrays, self.group_size, dtype=self._weight.dtype)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: str = "dynamic",
                   group_size: Optional[int] = None) -> "CodebookLinear":
        """Pack a dense [out, in] weight (exact if it holds <= 16 values per row / group, else
        k-means; see sparseinfer.formats.Codebook)."""
        check_act(act)
        return cls.from_weight(Codebook.from_dense(weight, group_size), bias, act=act)
