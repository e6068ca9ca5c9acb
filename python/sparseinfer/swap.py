"""sparsify(model): swap qualifying nn.Linear modules for the layers of a registered format, in
place. Which formats exist and what options they take comes from the registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from . import registry
from ._native import FLOAT_DTYPES
from .nn.linear_like import is_linear_like, linear_weight, replace_submodule


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    sparsity: float
    dense_bytes: int
    sparse_bytes: int  # 0 when not converted
    converted: bool
    reason: str = ""


@dataclass
class SparsifyReport:
    format: str
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def converted(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.converted]

    @property
    def dense_bytes(self) -> int:
        return sum(layer.dense_bytes for layer in self.converted)

    @property
    def sparse_bytes(self) -> int:
        return sum(layer.sparse_bytes for layer in self.converted)

    def __str__(self) -> str:
        lines = [f"{'layer':40s} {'shape':>14s} {'sparsity':>8s} {'dense MB':>9s} {'sparse MB':>9s}  note"]
        for l in self.layers:
            shape = f"{l.shape[0]}x{l.shape[1]}"
            sparse = f"{l.sparse_bytes / 1e6:9.2f}" if l.converted else f"{'-':>9s}"
            lines.append(f"{l.name:40s} {shape:>14s} {l.sparsity:8.3f} {l.dense_bytes / 1e6:9.2f} "
                         f"{sparse}  {'converted' if l.converted else l.reason}")
        lines.append(f"{len(self.converted)}/{len(self.layers)} Linear layers -> {self.format}; "
                     f"{self.dense_bytes / 1e6:.2f} MB dense -> {self.sparse_bytes / 1e6:.2f} MB")
        return "\n".join(lines)


def sparsify(model: nn.Module, format: str = "csr", min_sparsity: float = 0.5,
             filter: Optional[Callable[[str, nn.Linear], bool]] = None, **options) -> SparsifyReport:
    """Replace qualifying nn.Linear modules (and Hugging Face Conv1D, as in GPT-2) of `model`
    with the layer of `format` (a name in sparseinfer.registry: "csr", "2:4", "int8"), in place,
    and return a report of every one seen (converted or why not).

    The layer class decides which weights qualify: csr needs at least `min_sparsity` exact zeros,
    2:4 a 2:4 pattern (prune first with sparseinfer.compress.prune_2_4), int8 takes every Linear
    with in_features <= 65536. `options` are the format's registered options (int8: `act`,
    "dynamic" W8A8 or "none" weight-only, and `group_size`, None = per channel or a multiple of
    32), validated before any layer is swapped, then passed to the layer's from_dense.
    `filter(name, module)` may veto layers."""
    spec = registry.get(format)
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if isinstance(model, nn.Linear):
        raise ValueError("model is itself an nn.Linear and cannot be swapped in place; "
                         f"use {spec.layer_cls.__name__}.from_linear(model)")
    layer_cls = spec.layer_cls
    options = spec.check_options(options)  # fail before any layer is swapped
    report = SparsifyReport(format)
    for name, module in list(model.named_modules()):
        if not is_linear_like(module):
            continue
        weight, bias = linear_weight(module)
        sparsity = float((weight == 0).sum()) / max(1, weight.numel())
        dense_bytes = weight.numel() * weight.element_size()
        entry = LayerReport(name, tuple(weight.shape), sparsity, dense_bytes, 0, False)
        report.layers.append(entry)
        if weight.device.type != "cpu":
            entry.reason = f"on {weight.device} (CPU only for now)"
        elif weight.dtype not in FLOAT_DTYPES:
            entry.reason = f"dtype {weight.dtype} not supported"
        elif (blocker := layer_cls.conversion_blocker(weight, sparsity, min_sparsity)) is not None:
            entry.reason = blocker
        elif filter is not None and not filter(name, module):
            entry.reason = "excluded by filter"
        else:
            sparse = layer_cls.from_dense(weight, bias, **options)
            entry.sparse_bytes = sparse.weight.nbytes()
            entry.converted = True
            replace_submodule(model, name, sparse)
    return report
