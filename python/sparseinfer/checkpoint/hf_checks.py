"""A Hugging Face config.json checked against the stored tensors before the model is built for
real: counts of layers against the layer indices in the tensor names (before anything is built),
then every parameter and persistent buffer of a skeleton built entirely on the meta device against
the stored headers, and the bytes of the buffers the real build would compute against a cap
relative to the checkpoint's size. A config that disagrees with its tensors is refused here, not
after gigabytes are allocated."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from torch import nn

from ..nn.linear_like import is_linear_like, linear_features
from .errors import CheckpointError
from .files import TensorReader
from .layer_decode import checked_shape, stored_kind, stored_shape

MIN_BUFFER_BUDGET = 256 * 2**20  # bytes of buffers (rotary tables, masks) any checkpoint may ask for
BUFFER_BUDGET_FACTOR = 4         # ... or this many times its safetensors bytes, if more
MODULES_PER_TENSOR = 16          # submodules a build may create per stored tensor (plus a margin)
MODULE_MARGIN = 1000


def module_budget(reader: TensorReader) -> int:
    """How many submodules a model built for this checkpoint may register: each layer owns stored
    tensors, so a count in config.json (layers, experts, heads) that the tensors do not back runs
    out of budget instead of building millions of modules."""
    return MODULE_MARGIN + MODULES_PER_TENSOR * len(list(reader.keys()))


def _numbered_lists(names: Iterable[str]) -> dict[str, set[int]]:
    """'model.layers' -> {0, 1, ...}: the indices stored under every numbered prefix."""
    lists: dict[str, set[int]] = defaultdict(set)
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if i and part.isascii() and part.isdigit():
                lists[".".join(parts[:i])].add(int(part))
    return lists


def _configs(config) -> list[tuple[str, object]]:
    """The config and its sub-configs (text_config, vision_config, ...), with their key paths."""
    found = [("", config)]
    for key, value in vars(config).items():
        if hasattr(value, "to_dict") and hasattr(value, "model_type"):
            found.append((f"{key}.", value))
    return found


def check_layer_counts(config, reader: TensorReader) -> None:
    """Every layer that num_hidden_layers (n_layer, ...) of the config or a sub-config builds must be
    stored: some numbered prefix (model.layers, transformer.h) holds all of 0..n-1. Checked on tensor
    names only, before anything is built."""
    lists = _numbered_lists(reader.keys())
    for where, cfg in _configs(config):
        try:
            count = getattr(cfg, "num_hidden_layers", None)
        except Exception:  # a config class without the attribute map entry
            continue
        if count is None:
            continue
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise CheckpointError(f"config.json {where}num_hidden_layers must be a non-negative integer, got {count!r}")
        if count == 0 or any(len(indices) >= count and indices.issuperset(range(count)) for indices in lists.values()):
            continue  # every layer the config builds is stored (extra ones, e.g. MTP heads, are warned of)
        raise CheckpointError(f"config.json {where}num_hidden_layers = {count}, but the checkpoint's tensors hold "
                              f"{_describe_layers(lists)}")


def _describe_layers(lists: dict[str, set[int]]) -> str:
    top = {p: ix for p, ix in lists.items() if not any(q.isdigit() for q in p.split("."))}
    if not top:
        return "no numbered layers"
    prefix, indices = max(top.items(), key=lambda kv: (len(kv[1]), kv[0]))
    return f"{len(indices)} layer(s) under {prefix} (indices {min(indices)}..{max(indices)})"


def check_against_tensors(skeleton: nn.Module, reader: TensorReader) -> None:
    """Every Linear of `skeleton` (built on meta) against its stored layout's shape, every other
    parameter and persistent buffer against its stored header shape; missing ones are named.
    Reads headers and the small stored shape tensors only."""
    compressed = set()
    for name, module in skeleton.named_modules():
        if not is_linear_like(module):
            continue
        kind = stored_kind(reader, name)
        if kind in (None, "dense"):
            continue
        key = {"sparse": "shape", "packed": "weight_shape", "int8": "weight"}[kind]
        got = reader.shape_dtype(f"{name}.weight")[0] if kind == "int8" else stored_shape(reader, f"{name}.{key}")
        checked_shape(name, tuple(got), linear_features(module), key)
        compressed.add(name)
    slots: dict[int, tuple[object, list[str]]] = {}
    for mod_name, module in skeleton.named_modules(remove_duplicate=False):
        if mod_name in compressed:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        tensors = [(n, t) for n, t in module._parameters.items()]
        tensors += [(n, t) for n, t in module._buffers.items() if n not in module._non_persistent_buffers_set]
        for attr, t in tensors:
            if t is not None:
                slots.setdefault(id(t), (t, []))[1].append(prefix + attr)
    missing = []
    for target, keys in slots.values():
        stored = [k for k in keys if k in reader]
        if not stored:
            missing.extend(keys)
            continue
        shape, _ = reader.shape_dtype(stored[0])
        if tuple(shape) != tuple(target.shape):
            raise CheckpointError(f"tensor {stored[0]}: shape {tuple(shape)} does not match the model's "
                                  f"{tuple(target.shape)} (built from config.json)")
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{len(missing)} tensor(s) of the model are missing from the checkpoint: {shown}")


def check_buffer_bytes(skeleton: nn.Module, reader: TensorReader) -> None:
    """The buffers the real build computes (rotary tables, attention masks) are bounded by
    max(MIN_BUFFER_BUDGET, BUFFER_BUDGET_FACTOR x the checkpoint's bytes)."""
    sizes = {name: b.numel() * b.element_size() for name, b in skeleton.named_buffers()}
    total = sum(sizes.values())
    file_bytes = reader.file_bytes()
    cap = max(MIN_BUFFER_BUDGET, BUFFER_BUDGET_FACTOR * file_bytes)
    if total > cap:
        name = max(sizes, key=sizes.get)
        shape = tuple(skeleton.get_buffer(name).shape)
        raise CheckpointError(f"config.json: the model it describes would compute {total} bytes of buffers (largest: "
                              f"{name} of shape {shape}), more than the {cap} a {file_bytes}-byte checkpoint may ask "
                              "for; a dimension in config.json (head_dim, max_position_embeddings, ...) disagrees "
                              "with the stored tensors")


def check_has_parameters(skeleton: nn.Module, class_name: str) -> None:
    if next(iter(skeleton.parameters()), None) is None:
        raise CheckpointError(f"config.json architectures[0] = {class_name!r} builds a model with no parameters: "
                              "not a concrete architecture (name the model class, e.g. LlamaForCausalLM)")
