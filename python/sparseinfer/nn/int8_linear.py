"""Int8Linear: an nn.Linear whose weight is stored and multiplied as symmetric int8."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..formats.int8 import MAX_COLS, Int8, check_act
from .canonical_state import CanonicalWeightModule


class Int8Linear(CanonicalWeightModule):
    """y = x @ W.T + b with W int8 (per-channel or per-group scales). W is frozen: gradients flow
    to x as dX = dY @ dequant(W) for both act modes (straight-through for act="dynamic"'s
    quantization of x) and to the bias if made trainable, never to W.

    act="dynamic" (W8A8: activations quantized per token inside every call, int8 dot products)
    or "none" (weight-only: fp32 math on dequantized weights; most accurate, best at small m).

    state_dict holds the compressed-tensors int-quantized arrays (weight int8 [out, in],
    weight_scale [out, groups] in the model dtype); the packed form is rebuilt on load.
    """

    FORMAT = Int8

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, act: str = "dynamic",
                 group_size: Optional[int] = None):
        check_act(act)
        super().__init__(in_features, out_features, bias, dtype, group_size=group_size)
        self.act = act

    @classmethod
    def from_weight(cls, weight: Int8, bias: Optional[torch.Tensor] = None, act: str = "dynamic") -> "Int8Linear":
        """The layer around an already packed Int8 weight (no re-quantization)."""
        check_act(act)
        if not isinstance(weight, Int8):
            raise TypeError(f"weight must be an Int8, got {type(weight).__name__}")
        return super().from_weight(weight, bias, act=act)

    @property
    def group_size(self) -> Optional[int]:
        return self._weight.group_size

    def _weight_from_state(self, arrays: dict) -> Int8:
        # the stored scale's shape decides the grouping; this layer's is the first guess
        return Int8.from_canonical(arrays, self.group_size, dtype=self._weight.dtype)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: str = "dynamic",
                   group_size: Optional[int] = None) -> "Int8Linear":
        """Quantize a dense [out, in] weight (see sparseinfer.formats.Int8); CPU only for now."""
        check_act(act)
        return cls.from_weight(Int8.from_dense(weight, group_size), bias, act=act)

    @classmethod
    def from_linear(cls, linear: nn.Linear, act: str = "dynamic", group_size: Optional[int] = None) -> "Int8Linear":
        return cls.from_dense(linear.weight.detach(), linear.bias, act=act, group_size=group_size)

    @staticmethod
    def conversion_blocker(weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why sparsify() leaves this dense weight alone (any float weight quantizes)."""
        return f"in_features above {MAX_COLS}" if weight.shape[1] > MAX_COLS else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int8_linear(x.contiguous(), self._weight, self.bias, self.act)

    def extra_repr(self) -> str:
        g = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, act={self.act}, {g}, dtype={self._weight.dtype}")
