"""sparseinfer.save: a model with our layers -> safetensors + config.json in the compressed-tensors
layout (each registered format's layers as its sparsity format, e.g. sparse-bitmask or
sparse-24-bitmask, and/or its quantization scheme: int8 as int-quantized or 8-bit
pack-quantized, int4 as 4-bit pack-quantized; everything else dense), readable by
compressed-tensors. Sparse layouts are sparseinfer's own checkpoint format from now on
(compressed-tensors >= 0.15 marks them legacy); we write them as compressed-tensors 0.14 did,
sparse layers with int8 values (csr+int8, 2:4+int8) as its sparse + int-quantized composite
with the ``sparseinfer_sparse`` version section (see compression_config). Codebook layers are
sparseinfer's own layout (a ``sparseinfer-codebook`` config group), which compressed-tensors
refuses rather than misreads."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .. import registry
from ..formats.codebook import Codebook
from . import compression_config as cc
from .files import CONFIG_FILE, DEFAULT_MAX_SHARD_BYTES, parse_size, write_json, write_tensors
from .int_packing import pack_int32, pack_int32_dim0

SAVE_QUANT_FORMATS = (cc.INT_QUANTIZED, cc.PACK_QUANTIZED)


def save(model: nn.Module, directory: str, *, quant_format: str = cc.INT_QUANTIZED,
         max_shard_size=DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write `model` to `directory`: its state_dict as safetensors (sharded with
    model.safetensors.index.json above `max_shard_size`, bytes or like "2GB") and config.json
    (the Hugging Face config when the model has one) with ``quantization_config``.

    Sparse layers are stored in their format's sparsity layout when all share one (e.g. all
    Sparse24Linear: sparse-24-bitmask), else all in the general one (sparse-bitmask).
    CsrInt8Linear / Sparse24Int8Linear layers are sparse layers whose ``compressed`` values are
    their int8 weights, with ``weight_scale`` beside them and an int-quantized config group
    (whatever `quant_format` says: the composite compressed-tensors 0.14 writes; its decompress
    runs one quantization compressor per checkpoint, so keep the default quant_format when a
    model has both sparse int8 and Int8Linear layers and compressed-tensors must read it).
    Int8Linear layers are stored as `quant_format`: "int-quantized" (int8 weight, what vLLM reads) or
    "pack-quantized" (8-bit values in int32 words); Int4Linear layers always as 4-bit
    pack-quantized (asymmetric ones with their zero points packed along dim 0, as
    compressed-tensors does), CodebookLinear layers as sparseinfer-codebook (indices packed like
    4-bit pack-quantized, plus weight_codebook [rows, groups, 16]). One config group per distinct
    scheme; the top-level format is "mixed-precision" when the groups' formats differ. A layer of
    a registered format with no checkpoint layout is a ValueError. Tensors shared under several
    names (tied embeddings) are stored once. Every file is replaced atomically (written
    to a temporary file in `directory`, then renamed over the old one): a symlink in its place
    (a Hugging Face cache snapshot) is replaced, never written through. Returns the written file
    names."""
    if quant_format not in SAVE_QUANT_FORMATS:
        raise ValueError(f"quant_format must be one of {list(SAVE_QUANT_FORMATS)}, got {quant_format!r}")
    max_shard_bytes = parse_size(max_shard_size)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if meta:
        raise ValueError(f"model has tensors on the meta device, nothing to save: {', '.join(meta[:5])}")

    sparse_layers: dict[str, nn.Module] = {}
    sparse_formats: dict[str, registry.WeightFormat] = {}
    quantized: dict[tuple, list[str]] = {}
    sparse_int8: dict[tuple, list[str]] = {}  # sparse layers with int8 values: their quant schemes
    codebook: dict[tuple, list[str]] = {}
    for name, module in model.named_modules():
        spec = registry.for_layer(module)
        if spec is None:
            continue
        if spec.sparsity_format is not None:
            sparse_layers[name] = module
            sparse_formats[name] = spec
        if spec.quant_scheme is not None:
            schemes = quantized if spec.sparsity_format is None else sparse_int8
            schemes.setdefault(cc.quant_key(spec.quant_scheme(module)), []).append(name)
        elif spec.format_cls is Codebook:
            codebook.setdefault((module.act, module.group_size), []).append(name)
        elif spec.sparsity_format is None:
            raise ValueError(f"layer {name}: format {spec.name!r} has no checkpoint layout yet (nothing "
                             "could load it back)")
    tensors = _unique_cpu_tensors(model.state_dict())
    if len({s.sparsity_format for s in sparse_formats.values()}) > 1:
        # one sparsity format per checkpoint: the general one, which holds any pattern
        general = registry.get(registry.GENERAL_SPARSITY_FORMAT).sparsity_format
        for name, spec in list(sparse_formats.items()):
            if spec.sparsity_format != general:
                target = cc.sparse_format(general, int8_values=spec.quant_scheme is not None)
                _store_as(target, tensors, name, sparse_layers[name])
                sparse_formats[name] = target
    for (_, _, bits, symmetric), names in quantized.items():
        for name in names:
            if bits != 8:  # the layer's own state is pack-quantized already
                _store_zero_point(tensors, name, bits, symmetric)
            elif quant_format == cc.PACK_QUANTIZED:
                _store_as_packed(tensors, name)

    sparse = {}
    if sparse_layers:
        spec = next(iter(sparse_formats.values()))
        sparse = {spec.sparsity_format: (spec.sparsity_structure, list(sparse_layers))}
    qc = cc.build(sparse, quantized, quant_format, _global_sparsity(sparse_layers.values()), codebook, sparse_int8)

    os.makedirs(directory, exist_ok=True)
    files = write_tensors(tensors, directory, max_shard_bytes)  # each file replaced atomically, links not followed
    write_json(os.path.join(directory, CONFIG_FILE), _config_json(model, qc), sort_keys=True)
    return files + [CONFIG_FILE]


def _unique_cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; a tensor stored under several names keeps the first name only,
    and distinct views of one storage get their own copy (safetensors refuses shared memory)."""
    out, seen_views, seen_storage = {}, set(), set()
    for name, t in state.items():
        t = t.detach()
        view = (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if view in seen_views:
            continue
        seen_views.add(view)
        storage = (t.device, t.untyped_storage().data_ptr()) if t.numel() else None
        t = t.cpu().contiguous()
        if storage is not None and storage in seen_storage:
            t = t.clone()
        seen_storage.add(storage)
        out[name] = t
    return out


def _store_as(spec: registry.WeightFormat, tensors: dict, name: str, layer: nn.Module) -> None:
    """Replace a layer's canonical arrays in `tensors` by those of format `spec` (same weight:
    float values, or the same int8 values and scales)."""
    w = layer.weight
    if spec.quant_scheme is None:
        converted = spec.layer_cls.from_weight(spec.format_cls.from_dense(w.to_dense().cpu()))
    else:
        converted = spec.layer_cls.from_weight(spec.format_cls.from_quantized(w.qweight(), w.scale(), w.group_size,
                                                                              dtype=w.dtype), act=layer.act)
    state = converted.state_dict()
    for key in layer.state_keys():
        tensors.pop(f"{name}.{key}", None)
    for key in spec.layer_cls.state_keys():
        tensors[f"{name}.{key}"] = state[key]


def _store_as_packed(tensors: dict, name: str) -> None:
    q = tensors.pop(f"{name}.weight")
    tensors[f"{name}.weight_packed"] = pack_int32(q, 8)
    tensors[f"{name}.weight_shape"] = torch.tensor(list(q.shape), dtype=torch.int64)


def _store_zero_point(tensors: dict, name: str, bits: int, symmetric: bool) -> None:
    """compressed-tensors pack-quantized zero points: none when symmetric, else int32 packed along
    dim 0 ([ceil(rows * bits / 32), groups])."""
    zero = tensors.pop(f"{name}.weight_zero_point", None)
    if not symmetric and zero is not None:
        tensors[f"{name}.weight_zero_point"] = pack_int32_dim0(zero.to(torch.int8), bits)


def _global_sparsity(layers) -> float:
    total = sum(layer.in_features * layer.out_features for layer in layers)
    zeros = sum(layer.in_features * layer.out_features * layer.sparsity for layer in layers)
    return round(zeros / total, 6) if total else 0.0


def _config_json(model: nn.Module, qc: Optional[dict]) -> dict:
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict") and getattr(config, "model_type", None):
        data = config.to_dict()
        data.pop("quantization_config", None)
        if not data.get("architectures"):
            data["architectures"] = [type(model).__name__]
    else:  # not a Hugging Face model: config.json holds the compression only
        data = {}
    if qc is not None:
        data["quantization_config"] = qc
    return data
