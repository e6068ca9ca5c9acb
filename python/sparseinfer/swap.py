"""sparsify(model): swap qualifying nn.Linear modules for the layers of a registered format, in
place, with per-layer fallbacks or a timed per-layer choice (format="auto", see plan.py). Which
formats exist and what options they take comes from the registry."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from . import plan, registry
from ._native import FLOAT_DTYPES
from .formats.host import count_nonzero
from .nn.linear_like import is_linear_like, linear_weight, replace_submodule


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    sparsity: float
    dense_bytes: int
    sparse_bytes: int  # 0 when not converted
    converted: bool
    reason: str = ""   # why it got its format (or stayed dense); "" for the main format
    format: str = "dense"  # the registry name of the format it got, or "dense"
    options: dict = field(default_factory=dict)  # that format's options (defaults filled in)
    timings_ms: dict = field(default_factory=dict)  # format="auto": candidate -> median ms

    @property
    def label(self) -> str:
        """The format and its set options, e.g. "int8 (act=none)"."""
        return plan.Choice(self.format, tuple(sorted(self.options.items()))).label


@dataclass
class SparsifyReport:
    format: str  # what sparsify was asked for ("csr", ..., or "auto")
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

    @property
    def formats(self) -> dict[str, str]:
        """{layer name: the format it got, or "dense"} for every Linear seen."""
        return {layer.name: layer.format for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        layers = [dict(asdict(layer), shape=list(layer.shape)) for layer in self.layers]
        return {"format": self.format, "layers": layers, "converted": len(self.converted),
                "dense_bytes": self.dense_bytes, "sparse_bytes": self.sparse_bytes}

    def __str__(self) -> str:
        width = max([40] + [len(l.name) for l in self.layers])
        fwidth = max([6] + [len(l.label) for l in self.layers])
        lines = [f"{'layer':{width}s} {'shape':>12s} {'sparsity':>8s} {'format':{fwidth}s} "
                 f"{'dense MB':>9s} {'packed MB':>9s}  note"]
        for l in self.layers:
            shape = f"{l.shape[0]}x{l.shape[1]}"
            packed = f"{l.sparse_bytes / 1e6:9.2f}" if l.converted else f"{'-':>9s}"
            lines.append(f"{l.name:{width}s} {shape:>12s} {l.sparsity:8.3f} {l.label:{fwidth}s} "
                         f"{l.dense_bytes / 1e6:9.2f} {packed}  {l.reason or ('converted' if l.converted else '')}")
        counts: dict[str, int] = {}
        for l in self.converted:
            counts[l.label] = counts.get(l.label, 0) + 1
        got = (next(iter(counts)) if len(counts) == 1 and self.format != plan.AUTO
               else ", ".join(f"{label} x{n}" for label, n in counts.items()) or self.format)
        lines.append(f"{len(self.converted)}/{len(self.layers)} Linear layers -> {got}; "
                     f"{self.dense_bytes / 1e6:.2f} MB dense -> {self.sparse_bytes / 1e6:.2f} MB")
        return "\n".join(lines)



def sparsify(model: nn.Module, format: str = "csr", min_sparsity: float = 0.5,
             filter: Optional[Callable[[str, nn.Linear], bool]] = None, *, fallback: Any = None,
             allow: Any = None, m: Optional[int] = None, cache: Any = None, **options) -> SparsifyReport:
    """Replace qualifying nn.Linear modules (and Hugging Face Conv1D, as in GPT-2) of `model`
    with the layer of `format` (a name in sparseinfer.registry: "csr", "2:4", "int8"; or "auto",
    below), in place, and return a report of every one seen: the format it got and why
    (`print(report)`, `report.formats`, `report.to_dict()`).

    The layer class decides which weights qualify: csr needs at least `min_sparsity` exact zeros,
    2:4 a 2:4 pattern (prune first with sparseinfer.compress.prune_2_4), int8 takes every Linear
    with in_features <= 65536. `options` are the format's registered options (int8: `act`,
    "dynamic" W8A8 or "none" weight-only, and `group_size`, None = per channel or a multiple of
    32), validated before any layer is swapped, then passed to the layer's from_dense.
    `filter(name, module)` may veto layers (asked before the format's checks; a vetoed layer
    stays dense, with no fallback and no timing).

    fallback: for the layers `format` cannot take (an unpruned lm_head, a layer under
    min_sparsity, a non-2:4 weight), the formats to try in order; the first that can take the
    layer gets it ("dense" stops the search). A format name, a (name, options) pair such as
    ("int8", {"act": "none"}) or a sequence of them; a fallback's options come from its pair or
    its defaults, never from `options`. Default None: such layers stay dense (no silent numeric
    change). fallback="int8" (or ("int8", {"act": "none"}), weight-only, for decode) is the usual
    choice: it quarters the bytes of an fp32 head that pruning left dense.

    format="auto": each layer gets the fastest of the `allow` candidates that can take it, timed
    on the layer's own weight with an [m, in_features] activation (m default 1, decode) in the
    weight's dtype. `allow` takes the same entries as fallback plus "dense" (keep nn.Linear); the
    default is the lossless choices only, every registered sparse format plus "dense", so auto
    never changes results unless asked: pass e.g. allow=("csr", "2:4", ("int8", {"act": "none"}),
    "dense") to let it quantize. Decisions are cached per (candidates, shape, dtype, sparsity
    rounded to 0.05, 2:4-ness, m, build, CPU tier, threading backend, threads) in this process
    and, with cache="file.json", in that file for later runs (read as data only; a corrupt file
    is ignored with a warning). Options, fallback, allow, m and cache are checked before any layer
    is swapped; each wrong one raises a ValueError naming it.

    A Linear whose weight is tied to another module's (a Hugging Face lm_head sharing
    embed_tokens.weight) gets a packed copy; the other module keeps the dense tensor."""
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if format == plan.AUTO:
        if options:
            raise ValueError(f"format='auto' takes no format options (got {sorted(options)}); give them "
                             "per candidate in allow, e.g. allow=('csr', ('int8', {'act': 'none'}))")
        if fallback is not None:
            raise ValueError("fallback does not apply to format='auto' (it already picks per layer "
                             "among allow)")
        planner, main, chain = plan.AutoPlanner(allow, m, cache), None, []
    else:
        given = [n for n, v in (("allow", allow), ("m", m), ("cache", cache)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only format='auto' takes "
                             f"{'these' if len(given) > 1 else 'this'} (got format={format!r})")
        planner, main = None, plan.make_choice(format, options, "format")
        chain = plan.parse_choices(fallback, "fallback")
    if isinstance(model, nn.Linear):
        hint = "CSRLinear.from_linear(model)" if main is None else \
            f"{registry.get(main.name).layer_cls.__name__}.from_linear(model)"
        raise ValueError(f"model is itself an nn.Linear and cannot be swapped in place; use {hint}")
    tied = plan.tied_names(model)
    report = SparsifyReport(format)
    for name, module in list(model.named_modules()):
        if not is_linear_like(module):
            continue
        weight, bias = linear_weight(module)
        sparsity = (weight.numel() - count_nonzero(weight)) / max(1, weight.numel())
        dense_bytes = weight.numel() * weight.element_size()
        entry = LayerReport(name, tuple(weight.shape), sparsity, dense_bytes, 0, False)
        report.layers.append(entry)
        if weight.device.type != "cpu":
            entry.reason = f"on {weight.device} (CPU only for now)"
            continue
        if weight.dtype not in FLOAT_DTYPES:
            entry.reason = f"dtype {weight.dtype} not supported"
            continue
        if filter is not None and not filter(name, module):
            entry.reason = "excluded by filter"
            continue
        if planner is not None:
            choice, entry.reason, entry.timings_ms = planner.choose(weight, sparsity, min_sparsity)
        else:
            choice, entry.reason = plan.first_taker(main, chain, weight, sparsity, min_sparsity)
        if choice is None or choice.name == plan.DENSE:
            continue
        layer = choice.build(weight, bias)
        entry.format, entry.options = choice.name, choice.opts
        entry.sparse_bytes = layer.weight.nbytes()
        entry.converted = True
        others = [n for n in tied.get(id(module.weight), []) if n != f"{name}.weight"]
        if others:
            note = f"weight tied with {', '.join(others)} (kept dense there; this layer holds a packed copy)"
            entry.reason = f"{entry.reason}; {note}" if entry.reason else note
        replace_submodule(model, name, layer)
    if planner is not None:
        planner.save()
    return report
