"""The one registry of weight formats.

Each entry names a format (the string users pass: ``sparsify(model, format="csr")``), its format
class (packing, validation), its layer class, its op and path functions, its options with their
validation, how its layers are saved (compressed-tensors layout) and its benchmark hooks.
``sparsify``, the CLI, the benchmarks, the checkpoint code and the shared op-contract tests read
this table; nothing else lists formats. To add one, see CONTRIBUTING.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from . import reference
from .formats import CSR, Codebook, CsrInt8, Int4, Int8, Sparse24, Sparse24Int8
from .formats.int8 import ACTS, check_act, check_group_size
from .formats.lut4 import check_group_size as check_lut4_group_size
from .formats.n_m import prune_2_4
from .nn import (CodebookLinear, CSRLinear, CsrInt8Linear, Int4Linear, Int8Linear, Sparse24Int8Linear,
                 Sparse24Linear)
from .ops import (csr_linear, csr_linear_path, int8_linear, int8_linear_path, lut4_linear, lut4_linear_path,
                  sparse24_linear, sparse24_linear_path, sparse_int8_linear, sparse_int8_linear_path)
from .distributed.shard import (shard_24, shard_24_int8, shard_codebook, shard_csr, shard_csr_int8, shard_int4,
                                shard_int8)

# compressed-tensors sparsity formats (sparsity_config.format) our layers are saved as
SPARSE_BITMASK = "sparse-bitmask"
SPARSE_24_BITMASK = "sparse-24-bitmask"


@dataclass(frozen=True)
class Option:
    """A per-format option of ``sparsify`` / the layer's ``from_dense`` (and a CLI flag)."""
    name: str
    default: Any
    check: Callable[[Any], Any]      # raises ValueError on a bad value
    help: str
    parse: Callable[[str], Any] = str  # CLI text -> value
    bench_values: tuple = ()         # what `sparseinfer bench` runs by default (default only if empty)
    choices: Optional[tuple] = None  # CLI choices, when the values are a fixed set


@dataclass(frozen=True)
class WeightFormat:
    name: str                        # what users pass: "csr", "2:4", "int8"
    summary: str
    format_cls: type                 # packs / validates the weight (formats/)
    layer_cls: type                  # the nn.Linear replacement (nn/)
    op: Callable[..., torch.Tensor]  # op(x, weight, bias=None, **options)
    path: Callable[..., str]         # path(weight, m, **options): the kernel path a call takes
    reference: Callable[..., torch.Tensor]  # plain-torch oracle with op's signature
    example: Callable[..., tuple[torch.Tensor, Any]]  # (out, in, sparsity, dtype, seed) -> (dense, packed)
    options: tuple[Option, ...] = ()
    op_options: tuple[str, ...] = ()  # the options that are arguments of op / path (not of packing)
    devices: tuple[str, ...] = ("cpu",)
    # checkpoints: a sparsity format (sparsity_config) and/or a quantization scheme (config_groups)
    sparsity_format: Optional[str] = None
    sparsity_structure: Optional[str] = None
    quant_scheme: Optional[Callable[[nn.Module], tuple]] = None  # layer -> (act, group_size[, bits, symmetric])
    quant_bits: tuple[int, ...] = ()  # stored bit widths whose values this format runs
    exact: bool = True                # packs every weight it takes with its values unchanged (sparse formats)
    # benchmarks
    tunable_sparsity: bool = False   # any sparsity packs (the bench --sparsity grid applies)
    bench_sparsities: tuple[float, ...] = (0.5,)
    bench_dtype: Optional[torch.dtype] = None  # fixed activation dtype (the baselines' own)
    baselines: tuple[str, ...] = ("dense",)    # names in sparseinfer.benchmarks.baselines
    cuda_baselines: tuple[str, ...] = ()       # the same, for `sparseinfer bench --device cuda`
    # weight, sparsity -> a pruned weight this format takes (whole-model benchmark); None: any weight
    prune: Optional[Callable[[torch.Tensor, float], torch.Tensor]] = None
    # tensor parallelism: (canonical arrays, dim, start, stop, **layer options) -> the canonical
    # arrays of rows (dim 0) / columns (dim 1) [start, stop); see sparseinfer.distributed.shard.
    # None: sharded by dequantize -> slice -> re-pack, only where that is exact.
    shard: Optional[Callable[..., dict]] = None

    def check_options(self, options: dict) -> dict:
        """The validated options (ValueError naming an unknown or bad one), before any layer changes."""
        known = {o.name: o for o in self.options}
        unknown = set(options) - set(known)
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for format {self.name!r}"
                             + (f"; it takes {sorted(known)}" if known else ""))
        for name, value in options.items():
            known[name].check(value)
        return dict(options)

    def op_kwargs(self, options: dict) -> dict:
        """The subset of options that op / path take."""
        return {k: v for k, v in options.items() if k in self.op_options}

    def variants(self, given: Optional[dict] = None) -> list[dict]:
        """Option combinations to test or benchmark: each option's given values (a list), else
        its bench_values, else its default."""
        combos: list[dict] = [{}]
        for option in self.options:
            values = (given or {}).get(option.name) or option.bench_values or (option.default,)
            combos = [dict(c, **{option.name: v}) for c in combos for v in values]
        return combos


def _optional_int(text: str):
    """CLI text -> an int, or None for "none" (e.g. --group-size none: per channel)."""
    return None if text.lower() == "none" else int(text)


def _random_pruned(out_features: int, in_features: int, sparsity: float, dtype, seed: int) -> torch.Tensor:
    """A weight with exactly round(sparsity * numel) zeros at random places."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    k = int(round(sparsity * w.numel()))
    if k:
        w.view(-1)[torch.randperm(w.numel(), generator=g)[:k]] = 0
    return w.to(dtype)


def prune_magnitude_layer(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """`weight` with its round(sparsity * numel) smallest magnitudes zeroed (one layer, any shape)."""
    k = int(round(sparsity * weight.numel()))
    if k == 0:
        return weight.clone()
    flat = weight.abs().flatten().float()
    cut = flat.kthvalue(k).values
    return torch.where(weight.abs() > cut.to(weight.dtype), weight, torch.zeros((), dtype=weight.dtype))


def _csr_example(out_f, in_f, sparsity=0.5, dtype=torch.float32, seed=0):
    w = _random_pruned(out_f, in_f, sparsity, dtype, seed)
    return w, CSR.from_dense(w)


def _sparse24_example(out_f, in_f, sparsity=0.5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = prune_2_4(torch.randn(out_f, in_f, generator=g)).to(dtype)
    return w, Sparse24.from_dense(w)


def _int8_example(out_f, in_f, sparsity=0.0, dtype=torch.float32, seed=0, group_size=None):
    w = _random_pruned(out_f, in_f, sparsity, dtype, seed)
    return w, Int8.from_dense(w, group_size)


FORMATS: dict[str, WeightFormat] = {}


def register(spec: WeightFormat) -> WeightFormat:
    if spec.name in FORMATS:
        raise ValueError(f"format {spec.name!r} is already registered")
    FORMATS[spec.name] = spec
    return spec


register(WeightFormat(
    name="csr", summary="unstructured sparsity (CSR), fp32/bf16/fp16 values",
    format_cls=CSR, layer_cls=CSRLinear, op=csr_linear, path=csr_linear_path,
    reference=reference.csr_linear, example=_csr_example,
    devices=("cpu", "cuda"), sparsity_format=SPARSE_BITMASK, sparsity_structure="unstructured",
    tunable_sparsity=True, bench_sparsities=(0.5, 0.7, 0.9), cuda_baselines=("dense", "torch_sparse_csr"),
    prune=prune_magnitude_layer, shard=shard_csr))

register(WeightFormat(
    name="2:4", summary="2:4 semi-structured sparsity, fp32/bf16/fp16 values",
    format_cls=Sparse24, layer_cls=Sparse24Linear, op=sparse24_linear, path=sparse24_linear_path,
    reference=reference.sparse24_linear, example=_sparse24_example, devices=("cpu", "cuda"),
    sparsity_format=SPARSE_24_BITMASK, sparsity_structure="2:4",
    cuda_baselines=("dense", "torch_semi_structured"), prune=lambda weight, sparsity: prune_2_4(weight),
    shard=shard_24))

register(WeightFormat(
    name="int8", summary="symmetric int8 weights (per channel or per group); W8A8 or weight-only",
    format_cls=Int8, layer_cls=Int8Linear, op=int8_linear, path=int8_linear_path,
    reference=reference.int8_linear, example=_int8_example,
    options=(
        Option("act", "dynamic", check_act, "activations: dynamic (W8A8, per-token int8) or none "
               "(weight-only)", bench_values=("dynamic", "none"), choices=tuple(ACTS)),
        Option("group_size", None, check_group_size, "scales per group of this many input columns "
               "(a multiple of 32; default per channel)", parse=_optional_int),
    ),
    op_options=("act",), quant_scheme=lambda layer: (layer.act, layer.group_size), quant_bits=(8,), exact=False,
    bench_sparsities=(0.0,), bench_dtype=torch.float32,
    baselines=("dense", "torch_dynamic_int8", "ort_int8"), shard=shard_int8))


def _int4_example(out_f, in_f, sparsity=0.0, dtype=torch.float32, seed=0, group_size=128, symmetric=True):
    w = _random_pruned(out_f, in_f, sparsity, dtype, seed)
    return w, Int4.from_dense(w, group_size, symmetric)


def _codebook_example(out_f, in_f, sparsity=0.0, dtype=torch.float32, seed=0, group_size=None):
    """A weight of at most 16 distinct values per row (group): packs exactly."""
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size is None else -(-in_f // group_size)
    table = torch.randn(out_f, groups, 16, generator=g)
    idx = torch.randint(0, 16, (out_f, in_f), generator=g)
    col_group = torch.arange(in_f) // (in_f if group_size is None else group_size)
    w = table[torch.arange(out_f).unsqueeze(1), col_group.unsqueeze(0), idx]
    if sparsity:
        w = w * (torch.rand(out_f, in_f, generator=g) >= sparsity)
    return w.to(dtype), Codebook.from_dense(w.to(dtype), group_size)


def _parse_bool(text: str) -> bool:
    """CLI text -> bool ("true"/"false", "yes"/"no", "1"/"0"); anything else is an error."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise ValueError(f"expected true or false, got {text!r}")
    return value


def _check_symmetric(value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"symmetric must be True or False, got {value!r}")


_LUT4_ACT = Option("act", "dynamic", check_act, "activations: dynamic (W4A8, per-token int8, fastest) or none "
                   "(fp32 math on the exact weights)", bench_values=("dynamic", "none"), choices=tuple(ACTS))

register(WeightFormat(
    name="int4", summary="uniform 4-bit weights, per-group scales (symmetric or not); W4A8 or weight-only",
    format_cls=Int4, layer_cls=Int4Linear, op=lut4_linear, path=lut4_linear_path,
    reference=reference.lut4_linear, example=_int4_example,
    options=(
        _LUT4_ACT,
        Option("group_size", 128, check_lut4_group_size, "scales per group of this many input columns "
               "(a multiple of 32; none: per channel)", parse=_optional_int),
        Option("symmetric", True, _check_symmetric, "symmetric (zero point 0) or asymmetric per group",
               parse=_parse_bool, choices=(True, False)),
    ),
    op_options=("act",), quant_scheme=lambda layer: (layer.act, layer.group_size, 4, layer.symmetric), exact=False,
    quant_bits=(4,), bench_sparsities=(0.0,), bench_dtype=torch.float32, shard=shard_int4,
    baselines=("dense", "torch_dynamic_int8", "int8_w8a8", "int8_weight_only")))

register(WeightFormat(
    name="codebook", summary="shared weights: 4-bit indices into 16 values per channel or group (k-means)",
    format_cls=Codebook, layer_cls=CodebookLinear, op=lut4_linear, path=lut4_linear_path,
    reference=reference.lut4_linear, example=_codebook_example,
    options=(
        _LUT4_ACT,
        Option("group_size", None, check_lut4_group_size, "one table per group of this many input columns "
               "(a multiple of 32; default per channel)", parse=_optional_int),
    ),
    op_options=("act",), bench_sparsities=(0.0,), bench_dtype=torch.float32, exact=False, shard=shard_codebook,
    baselines=("dense", "torch_dynamic_int8", "int8_w8a8", "int8_weight_only")))



def _csr_int8_example(out_f, in_f, sparsity=0.5, dtype=torch.float32, seed=0, group_size=None):
    w = _random_pruned(out_f, in_f, sparsity, dtype, seed)
    return w, CsrInt8.from_dense(w, group_size)


def _sparse24_int8_example(out_f, in_f, sparsity=0.5, dtype=torch.float32, seed=0, group_size=None):
    g = torch.Generator().manual_seed(seed)
    w = prune_2_4(torch.randn(out_f, in_f, generator=g)).to(dtype)
    return w, Sparse24Int8.from_dense(w, group_size)


_SPARSE_INT8_OPTIONS = (  # `sparseinfer bench` runs W8A8 by default (weight-only: --act none)
    Option("act", "dynamic", check_act, "activations: dynamic (W8A8, per-token int8) or none (weight-only)",
           bench_values=("dynamic",), choices=tuple(ACTS)),
    Option("group_size", None, check_group_size, "scales per group of this many input columns "
           "(a multiple of 32; default per channel)", parse=_optional_int),
)

register(WeightFormat(
    name="csr+int8", summary="unstructured sparsity with int8 values (per channel or group scales); W8A8 or "
    "weight-only", format_cls=CsrInt8, layer_cls=CsrInt8Linear, op=sparse_int8_linear,
    path=sparse_int8_linear_path, reference=reference.sparse_int8_linear, example=_csr_int8_example,
    options=_SPARSE_INT8_OPTIONS, op_options=("act",), sparsity_format=SPARSE_BITMASK,
    sparsity_structure="unstructured", quant_scheme=lambda layer: (layer.act, layer.group_size), exact=False,
    tunable_sparsity=True, bench_sparsities=(0.7, 0.9), bench_dtype=torch.float32,  # 50% does not pay (README)
    baselines=("dense", "int8_w8a8", "int8_weight_only"), prune=prune_magnitude_layer, shard=shard_csr_int8))

register(WeightFormat(
    name="2:4+int8", summary="2:4 semi-structured sparsity with int8 values (per channel or group scales); "
    "W8A8 or weight-only", format_cls=Sparse24Int8, layer_cls=Sparse24Int8Linear, op=sparse_int8_linear,
    path=sparse_int8_linear_path, reference=reference.sparse_int8_linear, example=_sparse24_int8_example,
    options=_SPARSE_INT8_OPTIONS, op_options=("act",), sparsity_format=SPARSE_24_BITMASK,
    sparsity_structure="2:4", quant_scheme=lambda layer: (layer.act, layer.group_size), exact=False,
    bench_dtype=torch.float32, baselines=("dense", "int8_w8a8", "int8_weight_only"),
    prune=lambda weight, sparsity: prune_2_4(weight), shard=shard_24_int8))

# The sparsity format a checkpoint falls back to when its layers mix several (it holds any pattern).
GENERAL_SPARSITY_FORMAT = "csr"


def names() -> tuple[str, ...]:
    return tuple(FORMATS)


def get(name: str) -> WeightFormat:
    """The entry for a format name; ValueError listing the known ones otherwise."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {name!r}; available: {sorted(FORMATS)}") from None


def for_layer(module: nn.Module) -> Optional[WeightFormat]:
    """The entry whose layer class `module` is exactly, or None."""
    return next((s for s in FORMATS.values() if type(module) is s.layer_cls), None)


def for_weight(weight) -> WeightFormat:
    """The entry whose format class packed `weight`."""
    for spec in FORMATS.values():
        if type(weight) is spec.format_cls:
            return spec
    raise ValueError(f"not a registered weight format object: {type(weight).__name__}")


def for_sparsity_format(name: str) -> Optional[WeightFormat]:
    """The entry saved as compressed-tensors sparsity format `name`, or None."""
    return next((s for s in FORMATS.values() if s.sparsity_format is not None and s.sparsity_format == name), None)


def for_quant_bits(bits: int) -> Optional[WeightFormat]:
    """The quantized format that runs stored `bits`-bit weights (exact width preferred)."""
    quantized = [s for s in FORMATS.values() if bits in s.quant_bits]
    exact = [s for s in quantized if s.quant_bits[0] == bits]
    return (exact or quantized or [None])[0]


def options() -> Iterator[tuple[WeightFormat, Option]]:
    """Every (format, option) pair, for generated CLI flags."""
    for spec in FORMATS.values():
        for option in spec.options:
            yield spec, option


def options_by_name() -> dict[str, list[tuple[WeightFormat, Option]]]:
    """The (format, option) pairs grouped by option name: one CLI flag serves every format that
    has an option of that name (e.g. --act for int8, int4 and codebook)."""
    grouped: dict[str, list[tuple[WeightFormat, Option]]] = {}
    for spec, option in options():
        grouped.setdefault(option.name, []).append((spec, option))
    return grouped
