"""Pruning masks that stay applied while a model trains, then finish into sparseinfer's sparse layers.

torch.nn.utils.prune leaves a mask and a reparametrised weight, and the model gets no faster. Here a
mask zeroes the weight in place, a gradient hook zeroes the masked gradients (so optimizer state for
pruned weights stays zero) and a forward pre-hook re-zeroes the weight before every forward (so
momentum or weight decay can never revive a pruned weight). `finish()` removes the hooks and swaps the
layers for CSRLinear / Sparse24Linear via sparseinfer.sparsify, making the model smaller and faster.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..swap import sparsify



class PruningMasks:
    """Keep-masks (True = keep) on named layers of `model`, attached until `remove()` or `finish()`."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.masks: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._install(masks)

    def _install(self, masks: dict[str, torch.Tensor]) -> None:
        """Validate every mask before touching the model, then apply and attach."""
        modules = dict(self.model.named_modules())
        checked = {}
        for name, mask in masks.items():
            module = modules.get(name)
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise ValueError(f"masks[{name!r}]: model has no layer {name!r} with a weight")
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
                raise ValueError(f"masks[{name!r}] must be a bool tensor of the weight's shape "
                                 f"{tuple(weight.shape)}, got {getattr(mask, 'dtype', type(mask))} "
                                 f"{tuple(getattr(mask, 'shape', ()))}")
            checked[name] = mask.to(weight.device)
        self.masks = checked
        self.apply()
        self._attach()

    def _attach(self) -> None:
        modules = dict(self.model.named_modules())
        for name, mask in self.masks.items():
            module = modules[name]
            if module.weight.requires_grad:
                self._handles.append(module.weight.register_hook(lambda g, mask=mask: g * mask))
            self._handles.append(module.register_forward_pre_hook(
                lambda mod, args, mask=mask: self._zero(mod.weight, mask)))

    @staticmethod
    def _zero(weight: torch.Tensor, mask: torch.Tensor) -> None:
        with torch.no_grad():
            weight.mul_(mask)

    def apply(self) -> None:
        """Zero every masked weight now."""
        modules = dict(self.model.named_modules())
        for name, mask in self.masks.items():
            self._zero(modules[name].weight, mask)

    def update(self, masks: dict[str, torch.Tensor]) -> None:
        """Replace the masks (e.g. the next step of a gradual schedule) and apply them."""
        self.remove()
        self._install({**self.masks, **masks})

    def remove(self) -> None:
        """Detach the hooks; weights keep their zeros, but training may now change them."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def sparsity(self) -> dict[str, float]:
        """Fraction of pruned weights per layer, plus "total" over all masked weights."""
        result = {name: 1.0 - float(m.float().mean()) for name, m in self.masks.items()}
        total = sum(m.numel() for m in self.masks.values())
        result["total"] = 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(1, total)
        return result

    def finish(self, format: Optional[str] = "csr", min_sparsity: float = 0.5, **options):
        """Remove the hooks and, unless format is None, swap the masked layers for sparseinfer's sparse
        layers ("csr" or "2:4", see sparseinfer.sparsify) so the model really gets smaller and faster.
        Layers that do not qualify (e.g. below min_sparsity, Conv2d) stay dense with zeros; the report
        says which and why. Returns sparseinfer.SparsifyReport (None when format is None)."""
        self.apply()
        self.remove()
        if format is None:
            return None
        names = set(self.masks)
        return sparsify(self.model, format, min_sparsity=min_sparsity,
                        filter=lambda name, module: name in names, **options)

    def __repr__(self) -> str:
        return f"PruningMasks({len(self.masks)} layers, sparsity {self.sparsity()['total']:.3f})"
