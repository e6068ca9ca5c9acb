"""What our sparse layers share: a packed weight object that follows the module across devices
and dtypes, and a state_dict of the format's canonical (checkpoint) arrays."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class CanonicalWeightModule(nn.Module):
    """Base for layers whose weight is a packed format object (``self._weight``) and whose
    state_dict holds the format's canonical arrays (never the kernel layout). Subclasses set
    FORMAT (a format class with CANONICAL_KEYS, from_canonical and to_canonical) and may override
    `_weight_from_state(arrays)` (validates untrusted CPU data, raises ValueError)."""

    FORMAT: type

    @classmethod
    def state_keys(cls) -> Sequence[str]:
        """The state_dict keys of the weight: its format's canonical arrays."""
        return cls.FORMAT.CANONICAL_KEYS

    def _weight_from_state(self, arrays: dict):
        return self.FORMAT.from_canonical(arrays)

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: torch.dtype = torch.float32, **pack_options):
        """An all-zero layer of the given size (to fill with load_state_dict)."""
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._set_weight(self.FORMAT.from_dense(torch.zeros(out_features, in_features, dtype=dtype), **pack_options))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_weight(cls, weight, bias=None, **attrs):
        """The layer around an already packed weight object (no re-packing); `bias` is copied in
        the weight's dtype, on its device."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = weight.cols, weight.rows
        for key, value in attrs.items():
            setattr(layer, key, value)
        layer._set_weight(weight)
        layer.bias = None if bias is None else nn.Parameter(
            bias.detach().to(device=weight.device, dtype=weight.dtype).clone(), requires_grad=False)
        return layer

    def _set_weight(self, weight) -> None:
        self._weight = weight

    @property
    def weight(self):
        """The packed weight (CSR / Sparse24) on this module's device."""
        return self._weight

    @property
    def sparsity(self) -> float:
        return self._weight.sparsity

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every module it compiles (a whole model's too)
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled with torch.jit.script: its weight is a packed "
            "sparseinfer format object run by native kernels, which TorchScript cannot type. Use "
            "torch.compile(model), torch.export.export(model, args) or torch.jit.trace(model, "
            "example_inputs) instead (all three run the torch.ops.sparseinfer custom ops).")

    def _apply(self, fn, recurse=True):
        # .cuda() / .to(device, dtype) / .half(): move the bias (super) and re-pack the weight once
        # for the target device's kernels; fn applied to a probe tells where and what to.
        super()._apply(fn, recurse)
        w = self._weight
        probe = fn(torch.empty(0, dtype=w.dtype, device=w.device))
        if probe.dtype != w.dtype or probe.device != w.device:
            self._set_weight(w.to(dtype=probe.dtype, device=probe.device))
        return self

    def extra_repr(self) -> str:
        w = self._weight
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={w.sparsity:.3f}, dtype={w.dtype}, "
                f"device={w.device}")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, value in self._weight.to_canonical().items():
            destination[prefix + key] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        keys = self.state_keys()
        present = [prefix + k in state_dict for k in keys]
        if all(present):
            try:
                arrays = {k: state_dict[prefix + k] for k in keys}
                weight = self._weight_from_state({k: a.cpu() if isinstance(a, torch.Tensor) else a
                                                  for k, a in arrays.items()})
                weight = weight.to(device=self._weight.device)
            except ValueError as exc:
                error_msgs.append(f"{prefix}weight: {exc}")
            else:
                if weight.shape != (self.out_features, self.in_features):
                    error_msgs.append(f"{prefix}weight: shape {weight.shape} does not match "
                                      f"({self.out_features}, {self.in_features})")
                else:
                    self._set_weight(weight)
        else:
            missing_keys.extend(prefix + k for k, ok in zip(keys, present) if not ok)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        # The parent marks our canonical keys as unexpected: they are ours.
        ours = {prefix + k for k in keys}
        unexpected_keys[:] = [k for k in unexpected_keys if k not in ours]
