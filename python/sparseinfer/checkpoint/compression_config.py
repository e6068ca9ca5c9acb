"""config.json ``quantization_config`` in the compressed-tensors layout: parsed from untrusted
JSON into the per-layer facts a load needs, and built for a save.

Targets and ignore lists follow compressed-tensors: an entry matches a module by exact name, by
``re:<regex>`` (re.match on the name) or by a class name in the module's MRO; our layers and
Hugging Face Conv1D also match ``Linear``.

Codebook layers (sparseinfer's own layout, not a compressed-tensors one) are a config group of
format ``sparseinfer-codebook`` with ``weights: null`` (their values are per-row tables, not a
uniform grid) plus the versioned section ``quantization_config.sparseinfer_codebook``::

    "sparseinfer_codebook": {"version": 1, "index_bits": 4, "entries": 16,
                             "config_groups": {"group_2": {"group_size": 64}}}

(``group_size`` null: one table per output channel). compressed-tensors, transformers and vLLM
refuse the unknown group format instead of loading those layers wrongly.

Sparse layers are sparseinfer's own checkpoint format from now on: compressed-tensors >= 0.15
marks its sparse formats legacy (vLLM and transformers no longer load them), so we keep their
0.14 layouts (``sparse-bitmask``, ``sparse-24-bitmask``) ourselves, still readable from the files
llm-compressor wrote. Sparse layers with int8 values (csr+int8, 2:4+int8) are the compound
format compressed-tensors 0.14 writes for a sparse W8A8 model (and for weight-only int8 when
int-quantized is named; left to infer, it writes those pack-quantized, dense, or marlin-24):
the sparsity_config plus an ``int-quantized`` config group on the same layers (8-bit symmetric
channel or group weights; input_activations int8 dynamic per token, or null for weight-only),
whose sparse compressor ran on the int8 weights: ``compressed`` holds int8 values,
``weight_scale`` [rows, groups] lies beside them. A checkpoint we write with such layers
carries the versioned section::

    "sparseinfer_sparse": {"version": 1}

Files without it (llm-compressor's) read as version 1; a newer version is refused.
compressed-tensors 0.14 ignores the section and decompresses these files."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from .. import registry
from ..registry import SPARSE_24_BITMASK, SPARSE_BITMASK  # noqa: F401 (the names loads and inspect use)
from .errors import CheckpointError

QUANT_METHOD = "compressed-tensors"
LAYOUT_VERSION = "0.14.0"  # the compressed-tensors release whose tensor layouts we read and write
DENSE = "dense"
INT_QUANTIZED = "int-quantized"
NAIVE_QUANTIZED = "naive-quantized"
PACK_QUANTIZED = "pack-quantized"
# what a sparsity_config may name: dense, or the layout of a registered format (float and int8
# formats share a layout: listed once)
SPARSITY_FORMATS = (DENSE,) + tuple(dict.fromkeys(s.sparsity_format for s in registry.FORMATS.values()
                                                  if s.sparsity_format))
MIXED_PRECISION = "mixed-precision"  # the top-level format when config groups differ in format
CODEBOOK = "sparseinfer-codebook"  # sparseinfer's codebook layout (a config group format)
CODEBOOK_SECTION = "sparseinfer_codebook"
CODEBOOK_VERSION = 1
CODEBOOK_INDEX_BITS = 4
CODEBOOK_ENTRIES = 16
QUANT_FORMATS = (INT_QUANTIZED, NAIVE_QUANTIZED, PACK_QUANTIZED, CODEBOOK)
# formats compressed-tensors knows that we do not run (named in the error, not "unknown")
KNOWN_UNSUPPORTED = ("float-quantized", "marlin-24", MIXED_PRECISION, "nvfp4-pack-quantized",
                     "mxfp4-pack-quantized")
STRATEGIES = ("tensor", "channel", "group")
SPARSE_SECTION = "sparseinfer_sparse"  # sparseinfer's sparse checkpoint format (compound layers)
SPARSE_VERSION = 1
# config group formats whose int8 ``weight`` compressed-tensors' sparse compressors compress
SPARSE_QUANT_FORMATS = (INT_QUANTIZED, NAIVE_QUANTIZED)


def sparse_format(sparsity_format: Optional[str], int8_values: bool) -> Optional["registry.WeightFormat"]:
    """The registered format saved in `sparsity_format`'s layout with float values (csr, 2:4)
    or with int8 values plus weight_scale (csr+int8, 2:4+int8); None if there is none."""
    return next((s for s in registry.FORMATS.values()
                 if s.sparsity_format is not None and s.sparsity_format == sparsity_format
                 and (s.quant_scheme is not None) == int8_values), None)


def _where(path: str) -> str:
    return f"config.json quantization_config.{path}"


def _get(d: dict, key: str, path: str, types, default=None, required: bool = False):
    if key not in d or d[key] is None:
        if required:
            raise CheckpointError(f"{_where(path + key)} is missing")
        return default
    value = d[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise CheckpointError(f"{_where(path + key)} must be {_type_names(types)}, got {value!r}")
    if not isinstance(value, types):
        raise CheckpointError(f"{_where(path + key)} must be {_type_names(types)}, got {value!r}")
    return value


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false"}


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(_JSON_NAMES.get(t, t.__name__) for t in types)


def _names(d: dict, key: str, path: str) -> list[str]:
    value = _get(d, key, path, (list, str), [])
    value = [value] if isinstance(value, str) else value
    if not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"{_where(path + key)} must be a list of strings, got {value!r}")
    for v in value:
        if v.startswith("re:"):
            try:
                re.compile(v[3:])
            except re.error as exc:
                raise CheckpointError(f"{_where(path + key)}: bad regex {v!r} ({exc})") from None
    return value


def _class_names(module: nn.Module) -> set[str]:
    from ..nn.linear_like import is_hf_conv1d
    from ..nn.canonical_state import CanonicalWeightModule
    names = {c.__name__ for c in type(module).__mro__}
    if isinstance(module, CanonicalWeightModule) or is_hf_conv1d(module):
        names.add("Linear")
    return names


def _matches(name: str, module: nn.Module, entries: list[str]) -> bool:
    classes = None
    for entry in entries:
        if entry.startswith("re:"):
            if re.match(entry[3:], name):
                return True
        elif entry == name:
            return True
        else:
            classes = _class_names(module) if classes is None else classes
            if entry in classes:
                return True
    return False


@dataclass(frozen=True)
class WeightScheme:
    """How one group's Linear weights are quantized, and how we run its activations."""
    format: str
    num_bits: int
    strategy: str
    group_size: Optional[int]
    symmetric: bool
    act: str                     # "dynamic" (W8A8, per token) or "none" (weight-only)
    act_note: Optional[str]      # why our activation handling differs from the file's, if it does


def _weight_scheme(group: dict, path: str, default_format: Optional[str],
                   codebook: dict[str, Optional[int]]) -> Optional[WeightScheme]:
    fmt = _get(group, "format", path, str, default_format)
    if fmt == CODEBOOK:
        return _codebook_scheme(group, path, codebook)
    weights = _get(group, "weights", path, dict)
    if weights is None:
        return None
    wpath = path + "weights."
    wtype = _get(weights, "type", wpath, str, "int")
    if wtype != "int":
        raise CheckpointError(f"{_where(wpath + 'type')} is {wtype!r}; sparseinfer runs integer "
                              "weights only (float / fp8 / fp4 formats are not supported)")
    bits = _get(weights, "num_bits", wpath, int, 8)
    strategy = _get(weights, "strategy", wpath, str, "tensor")
    if strategy not in STRATEGIES:
        raise CheckpointError(f"{_where(wpath + 'strategy')} is {strategy!r}; supported: {list(STRATEGIES)}")
    group_size = _get(weights, "group_size", wpath, int)
    if strategy == "group" and (group_size is None or group_size <= 0):
        raise CheckpointError(f"{_where(wpath + 'group_size')} must be a positive int for strategy 'group', "
                              f"got {group_size!r}")
    if fmt is None:
        fmt = INT_QUANTIZED if bits == 8 else PACK_QUANTIZED
    _check_format(fmt, path + "format", QUANT_FORMATS)
    if fmt == PACK_QUANTIZED and bits not in (4, 8):
        raise CheckpointError(f"{_where(wpath + 'num_bits')} is {bits}; pack-quantized loads with 4 or 8 bits")
    if fmt != PACK_QUANTIZED and bits != 8:
        raise CheckpointError(f"{_where(wpath + 'num_bits')} is {bits}; {fmt} loads with 8 bits")
    act, note = _activation_mode(_get(group, "input_activations", path, dict), path + "input_activations")
    return WeightScheme(fmt, bits, strategy, group_size if strategy == "group" else None,
                        _get(weights, "symmetric", wpath, bool, True), act, note)


def _codebook_scheme(group: dict, path: str, codebook: dict[str, Optional[int]]) -> WeightScheme:
    """A sparseinfer-codebook config group: no uniform weight args; its table grouping comes
    from the sparseinfer_codebook section (parsed and validated beforehand)."""
    if group.get("weights") is not None:
        raise CheckpointError(f"{_where(path + 'weights')} must be null for format {CODEBOOK!r} (codebook "
                              f"weights are per-row tables, not a uniform grid; their layout is in "
                              f"quantization_config.{CODEBOOK_SECTION})")
    gname = path[len("config_groups."):-1]
    if gname not in codebook:
        raise CheckpointError(f"{_where(path[:-1])} has format {CODEBOOK!r}, but "
                              f"quantization_config.{CODEBOOK_SECTION}.config_groups has no entry {gname!r}")
    group_size = codebook[gname]
    act, note = _activation_mode(_get(group, "input_activations", path, dict), path + "input_activations")
    return WeightScheme(CODEBOOK, CODEBOOK_INDEX_BITS, "channel" if group_size is None else "group", group_size,
                        True, act, note)


def _codebook_section(qc: dict, codebook_groups: list[str]) -> dict[str, Optional[int]]:
    """The validated ``sparseinfer_codebook`` section: config group name -> group_size (None: per
    channel). Required exactly when a config group has format sparseinfer-codebook."""
    from ..formats.groups import GROUP_MULTIPLE
    section = _get(qc, CODEBOOK_SECTION, "", dict)
    if section is None:
        if codebook_groups:
            raise CheckpointError(f"{_where(CODEBOOK_SECTION)} is missing (config_groups.{codebook_groups[0]} has "
                                  f"format {CODEBOOK!r}; the section holds its layout version and grouping)")
        return {}
    path = CODEBOOK_SECTION + "."
    known = ("version", "index_bits", "entries", "config_groups")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise CheckpointError(f"{_where(path + unknown[0])} is not a version-{CODEBOOK_VERSION} key "
                              f"(known: {list(known)})")
    version = _get(section, "version", path, int, required=True)
    if version != CODEBOOK_VERSION:
        raise CheckpointError(f"{_where(path + 'version')} is {version}; this sparseinfer reads codebook layout "
                              f"version {CODEBOOK_VERSION}" + (" (the checkpoint is newer: upgrade sparseinfer)"
                                                               if version > CODEBOOK_VERSION else ""))
    for key, want in (("index_bits", CODEBOOK_INDEX_BITS), ("entries", CODEBOOK_ENTRIES)):
        got = _get(section, key, path, int, required=True)
        if got != want:
            raise CheckpointError(f"{_where(path + key)} is {got}; codebook layout version {CODEBOOK_VERSION} "
                                  f"has {want}")
    groups = _get(section, "config_groups", path, dict, required=True)
    out: dict[str, Optional[int]] = {}
    for gname, entry in groups.items():
        gpath = f"{path}config_groups.{gname}."
        if gname not in codebook_groups:
            raise CheckpointError(f"{_where(gpath[:-1])} names no config group of format {CODEBOOK!r}")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{_where(gpath[:-1])} must be an object")
        unknown = sorted(set(entry) - {"group_size"})
        if unknown:
            raise CheckpointError(f"{_where(gpath + unknown[0])} is not a version-{CODEBOOK_VERSION} key "
                                  "(known: ['group_size'])")
        if "group_size" not in entry:
            raise CheckpointError(f"{_where(gpath + 'group_size')} is missing (null: one table per output channel)")
        group_size = _get(entry, "group_size", gpath, int)
        if group_size is not None and (group_size <= 0 or group_size % GROUP_MULTIPLE):
            raise CheckpointError(f"{_where(gpath + 'group_size')} is {group_size}; it must be null (per channel) "
                                  f"or a positive multiple of {GROUP_MULTIPLE}")
        out[gname] = group_size
    return out


def _sparse_section(qc: dict) -> Optional[int]:
    """The version of the ``sparseinfer_sparse`` section, validated; None when absent (files
    llm-compressor wrote: version 1)."""
    section = _get(qc, SPARSE_SECTION, "", dict)
    if section is None:
        return None
    path = SPARSE_SECTION + "."
    unknown = sorted(set(section) - {"version"})
    if unknown:
        raise CheckpointError(f"{_where(path + unknown[0])} is not a version-{SPARSE_VERSION} key (known: ['version'])")
    version = _get(section, "version", path, int, required=True)
    if version != SPARSE_VERSION:
        raise CheckpointError(f"{_where(path + 'version')} is {version}; this sparseinfer reads sparse checkpoint "
                              f"format version {SPARSE_VERSION}" + (" (the checkpoint is newer: upgrade sparseinfer)"
                                                                    if version > SPARSE_VERSION else ""))
    return version


def _activation_mode(acts: Optional[dict], path: str) -> tuple[str, Optional[str]]:
    if acts is None:
        return "none", None
    kind = (_get(acts, "type", path + ".", str, "int"), _get(acts, "num_bits", path + ".", int, 8),
            _get(acts, "strategy", path + ".", str, "tensor"), _get(acts, "dynamic", path + ".", (bool, str), False),
            _get(acts, "symmetric", path + ".", bool, True))
    if kind == ("int", 8, "token", True, True):
        return "dynamic", None
    return "dynamic", (f"input activations {kind[1]}-bit {kind[0]} {kind[2]} "
                       f"{'dynamic' if kind[3] is True else 'static'}{'' if kind[4] else ' asymmetric'} "
                       "are run as int8 symmetric per-token dynamic")


def _check_format(fmt, path: str, allowed) -> None:
    if fmt in allowed:
        return
    if fmt in KNOWN_UNSUPPORTED or fmt in SPARSITY_FORMATS or fmt in QUANT_FORMATS:
        raise CheckpointError(f"{_where(path)} is {fmt!r}, which sparseinfer does not load here "
                              f"(supported: {list(allowed)})")
    raise CheckpointError(f"{_where(path)} names an unknown format {fmt!r} (supported: {list(allowed)})")


@dataclass
class CompressionConfig:
    """What a load needs from ``quantization_config``: which scheme quantizes a module, and the
    sparsity format of the sparse ones."""
    groups: list[tuple[list[str], WeightScheme]]
    ignore: list[str]
    sparsity_format: Optional[str]
    sparsity_targets: list[str]
    sparsity_ignore: list[str]
    sparse_version: Optional[int] = None  # the sparseinfer_sparse section's, if the file has one

    @classmethod
    def parse(cls, qc: Any) -> "CompressionConfig":
        if qc is None:
            return cls([], [], None, [], [])
        if not isinstance(qc, dict):
            raise CheckpointError(f"config.json quantization_config must be an object, got {type(qc).__name__}")
        method = _get(qc, "quant_method", "", str, QUANT_METHOD)
        if method != QUANT_METHOD:
            raise CheckpointError(f"{_where('quant_method')} is {method!r}; sparseinfer loads "
                                  f"{QUANT_METHOD!r} checkpoints")
        default_format = _get(qc, "format", "", str)
        if default_format is not None and default_format != DENSE:
            _check_format(default_format, "format", QUANT_FORMATS + (MIXED_PRECISION,))
        group_default = None if default_format in (None, DENSE, MIXED_PRECISION) else default_format
        config_groups = _get(qc, "config_groups", "", dict, {}) or {}
        for gname, group in config_groups.items():
            if not isinstance(group, dict):
                raise CheckpointError(f"{_where(f'config_groups.{gname}')} must be an object")
            fmt = _get(group, "format", f"config_groups.{gname}.", str)
            if fmt is not None:
                _check_format(fmt, f"config_groups.{gname}.format", QUANT_FORMATS)
        codebook = _codebook_section(qc, [g for g, group in config_groups.items()
                                          if _get(group, "format", f"config_groups.{g}.", str, group_default)
                                          == CODEBOOK])
        groups = []
        for gname, group in config_groups.items():
            path = f"config_groups.{gname}."
            scheme = _weight_scheme(group, path, group_default, codebook)
            if scheme is not None:
                groups.append((_names(group, "targets", path), scheme))
        sc = _get(qc, "sparsity_config", "", dict, {}) or {}
        sparsity_format = _get(sc, "format", "sparsity_config.", str)
        if sparsity_format is not None:
            _check_format(sparsity_format, "sparsity_config.format", SPARSITY_FORMATS)
        return cls(groups, _names(qc, "ignore", ""), sparsity_format,
                   _names(sc, "targets", "sparsity_config."), _names(sc, "ignore", "sparsity_config."),
                   _sparse_section(qc))

    def scheme_for(self, name: str, module: nn.Module) -> Optional[WeightScheme]:
        if _matches(name, module, self.ignore):
            return None
        for targets, scheme in self.groups:
            if _matches(name, module, targets):
                return scheme
        return None


def quant_key(scheme: tuple) -> tuple[str, Optional[int], int, bool]:
    """A registry quant_scheme, (act, group_size) for int8 or (act, group_size, bits, symmetric),
    as (act, group_size, bits, symmetric)."""
    if len(scheme) == 2:
        return (scheme[0], scheme[1], 8, True)
    act, group_size, bits, symmetric = scheme
    return (act, group_size, int(bits), bool(symmetric))


def _activation_args(act: str) -> Optional[dict]:
    return None if act == "none" else {
        "num_bits": 8, "type": "int", "symmetric": True, "dynamic": True, "strategy": "token",
        "group_size": None, "actorder": None, "block_structure": None, "observer": None, "observer_kwargs": {}}


def build(sparse: dict[str, tuple[str, list[str]]], quantized: dict[tuple, list[str]],
          quant_format: str, global_sparsity: float,
          codebook: Optional[dict[tuple[str, Optional[int]], list[str]]] = None,
          sparse_int8: Optional[dict[tuple, list[str]]] = None) -> Optional[dict]:
    """``quantization_config`` for a save. `sparse` maps a sparsity format to its sparsity
    structure and layer names (one format per checkpoint), `quantized` maps a registry
    quant_scheme ((act, group_size) for int8, (act, group_size, bits, symmetric) otherwise) to
    layer names, `codebook` maps (act, group_size) to codebook layer names, `sparse_int8` maps
    a quant_scheme to the sparse layers with int8 values (also named in `sparse`). `quant_format`
    is the format of the 8-bit groups; other widths are always pack-quantized, and sparse int8
    layers always int-quantized (their int8 ``weight`` is what the sparse layout compresses, as
    compressed-tensors 0.14 writes it; they add the ``sparseinfer_sparse`` section). One config
    group per distinct scheme and format; the top-level format is the common one, or
    mixed-precision when they differ."""
    codebook = codebook or {}
    sparse_int8 = sparse_int8 or {}
    if not sparse and not quantized and not codebook:
        return None
    qc: dict[str, Any] = {"quant_method": QUANT_METHOD, "version": LAYOUT_VERSION, "transform_config": {}}
    if sparse:
        (fmt, (structure, names)), = sparse.items()
        qc["sparsity_config"] = {
            "format": fmt, "targets": sorted(names), "ignore": [], "global_sparsity": global_sparsity,
            "sparsity_structure": structure,
            "registry_requires_subclass": False}
    else:
        qc["sparsity_config"] = {}
    if quantized or codebook or sparse_int8:
        merged: dict[tuple, list[str]] = {}
        for scheme, names in quantized.items():
            key = quant_key(scheme)
            merged.setdefault(key + (quant_format if key[2] == 8 else PACK_QUANTIZED,), []).extend(names)
        for scheme, names in sparse_int8.items():
            merged.setdefault(quant_key(scheme) + (INT_QUANTIZED,), []).extend(names)
        groups = {}
        for (act, group_size, bits, symmetric, fmt), names in sorted(merged.items(), key=lambda kv: str(kv[0])):
            weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False,
                       "strategy": "channel" if group_size is None else "group", "group_size": group_size,
                       "actorder": None, "block_structure": None, "observer": "minmax", "observer_kwargs": {}}
            groups[f"group_{len(groups)}"] = {"targets": sorted(names), "weights": weights,
                                              "input_activations": _activation_args(act),
                                              "output_activations": None, "format": fmt}
        tables = {}
        for (act, group_size), names in sorted(codebook.items(), key=lambda kv: str(kv[0])):
            gname = f"group_{len(groups)}"
            groups[gname] = {"targets": sorted(names), "weights": None, "input_activations": _activation_args(act),
                             "output_activations": None, "format": CODEBOOK}
            tables[gname] = {"group_size": group_size}
        if tables:
            qc[CODEBOOK_SECTION] = {"version": CODEBOOK_VERSION, "index_bits": CODEBOOK_INDEX_BITS,
                                    "entries": CODEBOOK_ENTRIES, "config_groups": tables}
        if sparse_int8:
            qc[SPARSE_SECTION] = {"version": SPARSE_VERSION}
        formats = {g["format"] for g in groups.values()}
        qc.update(config_groups=groups, format=formats.pop() if len(formats) == 1 else MIXED_PRECISION,
                  ignore=[], kv_cache_scheme=None, global_compression_ratio=None, quantization_status="compressed")
    return qc
