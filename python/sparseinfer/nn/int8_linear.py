"""Int8Linear: an nn.Linear whose weight is stored and multiplied as symmetric int8."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops
from ..formats.int8 import GROUP_MULTIPLE, MAX_COLS, Int8
from ..formats.errors import FormatError
from .canonical_state import CanonicalWeightModule


class Int8Linear(CanonicalWeightModule):
    """y = x @ W.T + b with W int8 (per-channel or per-group scales). Inference only.

    act="dynamic" (W8A8: activations quantized per token inside every call, int8 dot products)
    or "none" (weight-only: fp32 math on dequantized weights; most accurate, best at small m).
    """

    # state_dict keys: the compressed-tensors int-quantized layout (weight int8 [out, in],
    # weight_scale [out, groups] in the model dtype); the packed form is rebuilt on load.
    STATE_KEYS = ("weight", "weight_scale")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, act: str = "dynamic",
                 group_size: Optional[int] = None):
        super().__init__()
        ops._int8_act_code(act)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.act = act
        self._set_weight(Int8.from_dense(torch.zeros(out_features, in_features, dtype=dtype), group_size))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_weight(cls, weight: Int8, bias: Optional[torch.Tensor] = None, act: str = "dynamic") -> "Int8Linear":
        """The layer around an already packed Int8 weight (no re-quantization)."""
        ops._int8_act_code(act)
        if not isinstance(weight, Int8):
            raise TypeError(f"weight must be an Int8, got {type(weight).__name__}")
        return super().from_weight(weight, bias, act=act)

    @property
    def group_size(self) -> Optional[int]:
        return self._weight.group_size

    def _weight_from_state(self, qweight, scale) -> Int8:
        groups = 1 if scale.dim() == 1 else scale.shape[-1]
        group_size = None if groups == 1 else self.group_size
        cols = qweight.shape[-1]
        if groups > 1 and (group_size is None or -(-cols // group_size) != groups):
            # Not this module's grouping: the smallest multiple of 32 giving that many groups.
            per_group = -(-cols // groups)
            guess = -(-per_group // GROUP_MULTIPLE) * GROUP_MULTIPLE
            if -(-cols // guess) != groups:
                raise FormatError(f"Int8 weight_scale: {groups} groups fit no group size for {cols} columns")
            group_size = guess
        return Int8.from_quantized(qweight, scale, group_size, dtype=self._weight.dtype)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: str = "dynamic",
                   group_size: Optional[int] = None) -> "Int8Linear":
        """Quantize a dense [out, in] weight (see sparseinfer.formats.Int8); CPU only for now."""
        layer = cls(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, act=act)
        layer._set_weight(Int8.from_dense(weight, group_size))
        if bias is not None:
            layer.bias.data = bias.detach().to(weight.dtype).clone().cpu()
        return layer

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

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self._weight.qweight()
        destination[prefix + "weight_scale"] = self._weight.scale().to(self._weight.dtype)
