"""sparseinfer.load: a checkpoint directory (ours or compressed-tensors') -> a model whose Linear
layers run on our kernels. Every compressed layer is decoded and packed once; every other tensor
is checked against the model and filled in place (or materialised, for a skeleton on meta)."""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
from torch import nn

from ..nn.canonical_state import CanonicalWeightModule
from ..nn.linear_like import is_linear_like, linear_features, replace_submodule
from .compression_config import CompressionConfig
from .errors import CheckpointError
from .files import CONFIG_FILE, TensorReader, read_json
from .layer_decode import Notes, decode_layer, stored_kind
from .skeleton import build_hf_model


def load(directory: str, model: Optional[nn.Module] = None, *, min_sparsity: float = 0.5,
         tp_group=None, tp_plan: Optional[dict] = None) -> nn.Module:
    """Load the checkpoint in `directory` into `model`, or into a Hugging Face model built from
    its config.json when `model` is None (parameters on meta, so nothing is initialised twice).

    Compressed layers become CSRLinear (sparse-bitmask at >= `min_sparsity`), Sparse24Linear
    (sparse-24-bitmask, or 2:4-shaped sparse-bitmask below 70% sparsity), CsrInt8Linear /
    Sparse24Int8Linear (sparse-bitmask / sparse-24-bitmask holding int8 values under an
    int-quantized config group: compressed-tensors 0.14's sparse W8A8 / W8A16 composite, e.g.
    llm-compressor's "2of4 ... int8 ... BitM" models; act from input_activations; any sparsity),
    Int8Linear (int-quantized / pack-quantized 8-bit), Int4Linear (4-bit pack-quantized,
    symmetric or not), CodebookLinear (sparseinfer-codebook), or a dense weight
    where none of our kernels pays or applies (a warning names the layers). Raises CheckpointError,
    naming the file or tensor, on any malformed, missing or unsupported data. Returns the model
    in eval mode, on the CPU (move it with .to() afterwards).

    tp_group: a torch.distributed process group (e.g. torch.distributed.group.WORLD): this
    process loads only its tensor-parallel shard of every layer (sparseinfer.distributed; reads
    only its slice of each tensor from the files) and gets the model parallelized, split as
    `tp_plan` says (default sparseinfer.distributed.LLAMA_PLAN)."""
    if tp_group is not None:
        from .sharded_load import load_sharded
        return load_sharded(directory, model, group=tp_group, plan=tp_plan, min_sparsity=min_sparsity,
                            fill_remaining=_load_remaining)
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory")
    config_path = os.path.join(directory, CONFIG_FILE)
    has_config = os.path.exists(config_path)
    config_data = read_json(config_path) if has_config else {}
    config = CompressionConfig.parse(config_data.get("quantization_config"))
    reader = TensorReader(directory)
    if model is None:
        if not has_config:
            raise CheckpointError(f"{directory}: no {CONFIG_FILE} to build the model from; pass "
                                  "sparseinfer.load(directory, model=...)")
        model = build_hf_model(directory, config_data, reader)
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")

    notes = Notes()
    decoded = _load_layers(model, reader, config, min_sparsity, notes)
    filled = _load_remaining(model, reader, skip_modules=decoded)
    unexpected = [k for k in reader.keys() if k not in filled and k.rpartition(".")[0] not in decoded]
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
        warnings.warn(f"{len(unexpected)} checkpoint tensor(s) match nothing in the model and were "
                      f"ignored: {shown}", stacklevel=2)
    for message in notes.messages():
        warnings.warn(message, stacklevel=2)
    return model.eval()


def _load_layers(model: nn.Module, reader: TensorReader, config: CompressionConfig, min_sparsity: float,
                 notes: Notes) -> set[str]:
    """Decode every stored compressed Linear into its layer; returns the layer names (their
    tensors are consumed)."""
    decoded = set()
    for name, module in list(model.named_modules()):
        if not (is_linear_like(module) or isinstance(module, CanonicalWeightModule)):
            continue
        kind = stored_kind(reader, name)
        if kind is None:
            continue
        device = _device_of(module)
        if isinstance(module, CanonicalWeightModule):
            # One of ours: decode into a plain Linear of the same features, like a fresh model.
            rows, cols = linear_features(module)
            with torch.device("meta"):
                module = nn.Linear(cols, rows, bias=module.bias is not None, dtype=module.weight.dtype)
            replace_submodule(model, name, module)
        if kind == "dense":
            continue  # a plain Linear now; filled with the other tensors
        layer = decode_layer(reader, name, module, kind, config, min_sparsity, notes)
        if device is not None and device.type not in ("cpu", "meta"):
            layer = layer.to(device)
        if layer is not module:
            replace_submodule(model, name, layer)
        decoded.add(name)
    return decoded


def _device_of(module: nn.Module) -> Optional[torch.device]:
    """Where a Linear-like module lives (its weight is a tensor, or one of our packed weights)."""
    for attr in ("bias", "weight"):
        device = getattr(getattr(module, attr, None), "device", None)
        if device is not None:
            return device
    return None


def _load_remaining(model: nn.Module, reader: TensorReader, skip_modules: set[str]) -> set[str]:
    """Fill every parameter and persistent buffer outside the decoded layers from the file.
    Tied tensors (one object under several names) are read once from whichever name is stored.
    Returns the consumed tensor names."""
    slots: dict[int, list[tuple[nn.Module, str, str, bool]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        if mod_name in skip_modules:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for pname, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, pname, prefix + pname, True))
        for bname, b in module._buffers.items():
            if b is not None and bname not in module._non_persistent_buffers_set:
                slots.setdefault(id(b), []).append((module, bname, prefix + bname, False))
    consumed, missing = set(), []
    for aliases in slots.values():
        module, attr, _, is_param = aliases[0]
        target = getattr(module, attr)
        stored = [key for _, _, key, _ in aliases if key in reader]
        if not stored:
            missing.extend(key for _, _, key, _ in aliases)
            continue
        key = stored[0]
        consumed.update(stored)
        value = _checked_value(reader, key, target)
        if target.device.type == "meta":
            if is_param:
                value = nn.Parameter(value, requires_grad=target.requires_grad and value.is_floating_point())
            for owner, owner_attr, _, _ in aliases:
                (owner._parameters if is_param else owner._buffers)[owner_attr] = value
        else:
            with torch.no_grad():
                target.copy_(value)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{len(missing)} tensor(s) of the model are missing from the checkpoint: {shown}")
    leftover = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if leftover:
        raise CheckpointError(f"the model still has tensors on the meta device after loading (not stored in "
                              f"the checkpoint, e.g. non-persistent buffers): {', '.join(leftover[:5])}")
    return consumed


def _checked_value(reader: TensorReader, key: str, target: torch.Tensor) -> torch.Tensor:
    shape, _ = reader.shape_dtype(key)
    if tuple(shape) != tuple(target.shape):
        raise CheckpointError(f"tensor {key}: shape {tuple(shape)} does not match the model's {tuple(target.shape)}")
    value = reader.get(key)
    if value.dtype == target.dtype:
        return value
    if value.is_floating_point() and target.is_floating_point():
        return value.to(target.dtype)
    raise CheckpointError(f"tensor {key}: dtype {value.dtype} cannot fill the model's {target.dtype} tensor")
