"""sparsify(model): swap qualifying nn.Linear modules for sparse layers, in place."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

from .._native import FLOAT_DTYPES
from ..formats.int8 import check_group_size
from ..ops import _int8_act_code
from .csr_linear import CSRLinear
from .int8_linear import Int8Linear
from .linear_like import is_linear_like, linear_weight, replace_submodule
from .sparse24_linear import Sparse24Linear

FORMATS = {"csr": CSRLinear, "2:4": Sparse24Linear, "int8": Int8Linear}
LAYER_OPTIONS = {"csr": set(), "2:4": set(), "int8": {"act", "group_size"}}


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
    with the sparse layer for `format`, in place, and return a report of every one seen
    (converted or why not).

    format="csr": layers whose weight has at least `min_sparsity` exact zeros.
    format="2:4": layers whose weight is 2:4 sparse (prune first with
    sparseinfer.compress.prune_2_4); `min_sparsity` does not apply.
    format="int8": every Linear (in_features <= 65536), quantized to int8; options `act`
    ("dynamic" W8A8 or "none" weight-only) and `group_size` (None = per channel, or a multiple
    of 32); `min_sparsity` does not apply.
    `filter(name, module)` may veto layers; `options` go to the layer's from_dense."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; available: {sorted(FORMATS)}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if isinstance(model, nn.Linear):
        raise ValueError("model is itself an nn.Linear and cannot be swapped in place; "
                         f"use {FORMATS[format].__name__}.from_linear(model)")
    layer_cls = FORMATS[format]
    unknown = set(options) - LAYER_OPTIONS[format]
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for format {format!r}")
    if format == "int8":  # fail before any layer is swapped
        _int8_act_code(options.get("act", "dynamic"))
        check_group_size(options.get("group_size"))
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
