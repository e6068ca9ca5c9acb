"""sparseinfer.load(directory, tp_group=...): every tensor-parallel rank reads only its slice of
each split tensor from the safetensors files (``get_slice``: the bytes of the rows / columns it
needs, a block at a time), lets the format's shard rule (``registry.WeightFormat.shard``) cut the
canonical arrays, and then decodes the shard exactly as a single-process load decodes a layer
(same validation, same format choice, same packing). Peak memory per rank is about its shard."""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
from torch import nn

from .. import registry
from ..distributed.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from ..distributed.tensor_parallel import attach_info, group_info, shard_linear
from ..distributed.plan import LayerPlan, resolve
from ..distributed.shard import layout_rule, shard_dense
from ..formats import FormatError
from ..nn.linear_like import is_hf_conv1d, linear_features, replace_submodule
from . import compression_config as cc
from .compression_config import CompressionConfig
from .errors import CheckpointError
from .files import CONFIG_FILE, TensorReader, read_json
from .layer_decode import Notes, decode_layer, stored_kind
from .skeleton import build_hf_model

_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


class _LazyTensor:
    """A stored tensor read on demand: ``.shape`` from the header, ``[...]`` reads only the bytes
    of the requested slice (safetensors get_slice); read errors name the tensor."""

    def __init__(self, reader: TensorReader, key: str):
        self.key = key
        self._file = reader.file_of(key)
        try:
            self._slice = reader._open(self._file).get_slice(key)
            self.shape = tuple(self._slice.get_shape())
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"tensor {key} header cannot be read ({exc})") from None

    def __getitem__(self, index) -> torch.Tensor:
        try:
            return self._slice[index]
        except Exception as exc:
            raise CheckpointError(f"tensor {self.key} in {self._file} cannot be read ({exc})") from None


class _ShardView:
    """The reader decode_layer sees for one layer: its tensors replaced by this rank's shard
    (validated by decode_layer like any stored tensor); everything else from the files."""

    def __init__(self, reader: TensorReader, arrays: dict[str, torch.Tensor], hidden: set[str]):
        self._reader, self._arrays, self._hidden = reader, arrays, hidden

    def __contains__(self, key: str) -> bool:
        return key in self._arrays or (key not in self._hidden and key in self._reader)

    def get(self, key: str) -> torch.Tensor:
        if key in self._arrays:
            return self._arrays[key]
        if key in self._hidden:
            raise CheckpointError(f"tensor {key} is missing from the checkpoint")
        return self._reader.get(key)

    def optional(self, key: str) -> Optional[torch.Tensor]:
        return self.get(key) if key in self else None

    def shape_dtype(self, key: str):
        if key in self._arrays:
            t = self._arrays[key]
            return tuple(t.shape), _DTYPE_NAMES.get(t.dtype, str(t.dtype))
        return self._reader.shape_dtype(key)


def load_sharded(directory: str, model: Optional[nn.Module] = None, *, group=None, plan: Optional[dict] = None,
                 min_sparsity: float = 0.5, fill_remaining) -> nn.Module:
    """sparseinfer.load(directory, tp_group=group, tp_plan=plan): this process (a rank of
    `group`, the default group when None) builds and keeps only its shard of every layer the plan
    splits (sparseinfer.distributed.LLAMA_PLAN by default); the model comes back parallelized (see
    distributed.parallelize). `fill_remaining(model, reader, skip_modules)` is load's filler of
    the tensors outside the split layers (norms, buffers), passed in by load."""
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    group, rank, world = group_info(group)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory")
    config_path = os.path.join(directory, CONFIG_FILE)
    config_data = read_json(config_path) if os.path.exists(config_path) else {}
    config = CompressionConfig.parse(config_data.get("quantization_config"))
    reader = TensorReader(directory)
    if model is None:
        if not config_data:
            raise CheckpointError(f"{directory}: no {CONFIG_FILE} to build the model from; pass model=")
        model = build_hf_model(directory, config_data, reader)
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    layers = resolve(model, plan, world)
    notes = Notes()
    consumed = set()
    tied = _stored_names(model, reader)
    slices: dict = {}
    for p in layers:
        module = model.get_submodule(p.name)
        replace_submodule(model, p.name, _load_parallel(reader, p, module, config, min_sparsity, notes,
                                                        group, rank, world, tied, slices))
        consumed.update(k for k in reader.keys() if k.startswith(p.name + "."))
    planned = tuple(p.name for p in layers)
    skip = {n for n, _ in model.named_modules() if any(n == q or n.startswith(q + ".") for q in planned)}
    filled = fill_remaining(model, reader, skip_modules=skip)
    unexpected = [k for k in reader.keys() if k not in filled and k not in consumed
                  and not any(k.startswith(q + ".") for q in skip)]
    if unexpected:
        warnings.warn(f"{len(unexpected)} checkpoint tensor(s) match nothing in the model and were ignored: "
                      + ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else ""), stacklevel=3)
    for message in notes.messages():
        warnings.warn(message, stacklevel=3)
    attach_info(model, group, rank, world, layers)
    return model.eval()


def _stored_names(model: nn.Module, reader: TensorReader) -> dict[int, str]:
    """id of every parameter -> the name it is stored under (tied weights, e.g. an lm_head sharing
    the embedding, are stored once under one of their names)."""
    names = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for pname, param in module._parameters.items():
            key = f"{mod_name}.{pname}" if mod_name else pname
            if param is not None and key in reader:
                names.setdefault(id(param), key)
    return names


def _dense_rows(reader, key: str, module, start: int, stop: int, slices: dict) -> nn.Parameter:
    """Rows [start, stop) of a stored dense [rows, cols] weight, read once per key and bounds (an
    embedding and the lm_head tied to it share them)."""
    if (key, start, stop) not in slices:
        stored = _LazyTensor(reader, key)
        if stored.shape != tuple(module.weight.shape):
            raise CheckpointError(f"tensor {key}: shape {stored.shape} does not match the model's "
                                  f"{tuple(module.weight.shape)}")
        weight = _float(shard_dense(stored, 0, start, stop), module.weight.dtype, key)
        slices[key, start, stop] = nn.Parameter(weight, requires_grad=False)
    return slices[key, start, stop]


def _load_parallel(reader, p: LayerPlan, module, config, min_sparsity, notes, group, rank, world, tied: dict,
                   slices: dict) -> nn.Module:
    start, stop = p.bounds(rank, world)
    weight = getattr(module, "weight", None)
    key = f"{p.name}.weight"
    if key not in reader and isinstance(weight, torch.Tensor) and id(weight) in tied:
        key = tied[id(weight)]  # stored under the name of the module it is tied to
    if p.style == "vocab":
        if key not in reader:
            raise CheckpointError(f"tensor {key} is missing from the checkpoint")
        weight = _dense_rows(reader, key, module, start, stop, slices)
        return VocabParallelEmbedding(weight, module.num_embeddings, start, stop, group, rank, world)
    if key != f"{p.name}.weight" and p.dim == 0 and getattr(module, "bias", None) is None:
        with torch.device("meta"):  # a dense Linear tied to a stored embedding: share its rows
            local = nn.Linear(module.in_features, stop - start, bias=False, dtype=module.weight.dtype)
        local.weight = _dense_rows(reader, key, module, start, stop, slices)
    else:
        local = _load_linear_shard(reader, p.name, module, p.dim, start, stop, config, min_sparsity, notes)
    rows, cols = linear_features(module)
    if p.style == "rowwise":
        bias = None
        if getattr(module, "bias", None) is not None:
            bias = _float(reader.get(f"{p.name}.bias"), _dtype(module), f"{p.name}.bias")
            if tuple(bias.shape) != (rows,):
                raise CheckpointError(f"tensor {p.name}.bias: shape {tuple(bias.shape)} does not match ({rows},)")
        return RowParallelLinear(local, bias, p.size, start, stop, group, rank, world)
    return ColumnParallelLinear(local, cols, p.size, start, stop, group, rank, world,
                                gather=p.style == "colwise_rep", chunk=p.bounds(0, world)[1])


def _dtype(module: nn.Module) -> torch.dtype:
    dtype = module.weight.dtype
    return dtype if dtype.is_floating_point else torch.float32


def _float(t: torch.Tensor, dtype: torch.dtype, key: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise CheckpointError(f"tensor {key}: must be a float tensor, got {t.dtype}")
    return t.to(dtype)


def _load_linear_shard(reader, name, module, dim, start, stop, config, min_sparsity, notes) -> nn.Module:
    """This rank's rows / columns [start, stop) of the stored Linear `name`, decoded to its layer."""
    if is_hf_conv1d(module):
        raise CheckpointError(f"layer {name}: Hugging Face Conv1D layers cannot be loaded split (Llama-family "
                              "models use nn.Linear)")
    kind = stored_kind(reader, name)
    if kind is None:
        raise CheckpointError(f"tensor {name}.weight is missing from the checkpoint")
    rows, cols = linear_features(module)
    has_bias = getattr(module, "bias", None) is not None
    dtype = _dtype(module)
    shard_rows, shard_cols = (stop - start, cols) if dim == 0 else (rows, stop - start)
    with torch.device("meta"):
        local = nn.Linear(shard_cols, shard_rows, bias=has_bias and dim == 0, dtype=dtype)
    arrays: dict[str, torch.Tensor] = {}
    if has_bias and dim == 0:
        bias = reader.get(f"{name}.bias") if f"{name}.bias" in reader else None
        if bias is not None:
            if tuple(bias.shape) != (rows,):
                raise CheckpointError(f"tensor {name}.bias: shape {tuple(bias.shape)} does not match ({rows},)")
            arrays[f"{name}.bias"] = bias[start:stop].clone()
    if kind == "dense":
        key = f"{name}.weight"
        stored = _LazyTensor(reader, key)
        if stored.shape != (rows, cols):
            raise CheckpointError(f"tensor {key}: shape {stored.shape} does not match the model's {(rows, cols)}")
        local.weight = nn.Parameter(_float(shard_dense(stored, dim, start, stop), dtype, key), requires_grad=False)
        if local.bias is not None:
            if f"{name}.bias" not in arrays:
                raise CheckpointError(f"tensor {name}.bias is missing from the checkpoint")
            local.bias = nn.Parameter(_float(arrays[f"{name}.bias"], dtype, f"{name}.bias"), requires_grad=False)
        return local
    stored = {k[len(name) + 1:]: k for k in reader.keys()
              if k.startswith(name + ".") and "." not in k[len(name) + 1:] and k != f"{name}.bias"}
    rule, options = _rule(kind, config, name, local, stored)
    if rule is None:  # no rule: decode the whole layer (one layer's memory), then split it exactly or refuse
        with torch.device("meta"):
            whole = nn.Linear(cols, rows, bias=has_bias, dtype=dtype)
        layer = decode_layer(reader, name, whole, kind, config, min_sparsity, notes)
        return shard_linear(layer, dim, start, stop, name)
    try:
        shard = rule({k: _LazyTensor(reader, key) for k, key in stored.items()}, dim, start, stop, **options)
    except FormatError as exc:
        key = {"qweight": "weight", "scale": "weight_scale"}.get(exc.array, exc.array)
        raise CheckpointError(f"tensor {name}.{key}: {exc.detail}" if key else f"layer {name}: {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"layer {name}: {exc}") from None
    arrays.update({f"{name}.{k}": v for k, v in shard.items()})
    view = _ShardView(reader, arrays, hidden={f"{name}.bias"} if dim == 1 else set())
    return decode_layer(view, name, local, kind, config, min_sparsity, notes)


def _rule(kind: str, config: CompressionConfig, name: str, module: nn.Module, keys):
    """(shard rule, its options) for a stored layer of `kind` with tensors `keys`: the registered
    format's rule, else the rule of its checkpoint layout; (None, {}) when there is neither."""
    if kind == "sparse":  # a weight_scale beside the sparse arrays: they hold int8 values
        spec = cc.sparse_format(config.sparsity_format, int8_values="weight_scale" in set(keys))
        return (None, {}) if spec is None else (spec.shard, {})  # None: decode_layer names the problem
    scheme = config.scheme_for(name, module)
    if scheme is None:
        return None, {}
    options = {"group_size": scheme.group_size, "num_bits": scheme.num_bits}
    if scheme.format == getattr(cc, "CODEBOOK", "sparseinfer-codebook"):
        spec = registry.FORMATS.get("codebook")
    elif "weight_packed" in set(keys):  # pack-quantized files (any bit width, zero points packed on dim 0)
        return layout_rule(keys), options
    else:
        spec = registry.for_quant_bits(scheme.num_bits)
    return (spec.shard if spec is not None and spec.shard is not None else layout_rule(keys)), options
