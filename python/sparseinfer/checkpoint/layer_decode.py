"""One Linear's stored tensors -> the layer that runs them: the layer of the registered format
whose layout they are in (CSRLinear / Sparse24Linear / CsrInt8Linear / Sparse24Int8Linear /
Int8Linear / Int4Linear / CodebookLinear today), or a dense weight where no kernel of ours pays.
Every array is validated here, once, before a kernel sees it; errors name the tensor."""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import torch
from torch import nn

from .. import registry
from .._native import FLOAT_DTYPES
from ..formats import FormatError
from ..formats import host
from ..formats.bits import unpack_bits
from ..formats.groups import GROUP_MULTIPLE
from ..formats.int8 import MAX_COLS
from ..formats.lut4 import MAX_COLS as LUT4_MAX_COLS
from ..formats.sparse_int8 import MAX_COLS as SPARSE_INT8_LAYOUT_MAX_COLS
from ..nn.linear_like import is_hf_conv1d, linear_features
from . import compression_config as cc
from .errors import CheckpointError
from .files import TensorReader
from .int_packing import unpack_int32, unpack_int32_dim0

SPARSE_KEYS = ("shape", "compressed", "bitmask")
# Above this sparsity CSR beats the 2:4 kernel even on a 2:4-compatible weight.
CSR_OVER_24_SPARSITY = 0.7
MAX_FEATURES = 2**31 - 1  # a stored weight shape beyond this is corrupt (and overflows int32 indices)
# the widest sparse int8 weight the sparse int8 kernels take (wider ones load as float sparse)
SPARSE_INT8_MAX_COLS = SPARSE_INT8_LAYOUT_MAX_COLS
# the rank of ``compressed`` in each sparsity layout, checked here for int8 values (the formats
# validate a float copy of them, whose errors would name the copy's dtype)
COMPRESSED_RANK = {cc.SPARSE_BITMASK: 1, cc.SPARSE_24_BITMASK: 2}


class Notes:
    """Load-time notices, one warning per kind naming how many layers and which."""

    def __init__(self):
        self._layers: dict[str, list[str]] = defaultdict(list)

    def add(self, message: str, layer: str) -> None:
        self._layers[message].append(layer)

    def messages(self) -> list[str]:
        out = []
        for message, layers in self._layers.items():
            shown = ", ".join(layers[:3]) + (", ..." if len(layers) > 3 else "")
            out.append(f"{message}; {len(layers)} layer{'s' if len(layers) > 1 else ''}: {shown}")
        return out


def stored_kind(reader: TensorReader, name: str) -> Optional[str]:
    """'sparse', 'packed', 'int8', 'dense', or None if no weight tensor of `name` is stored."""
    present = [f"{name}.{k}" in reader for k in SPARSE_KEYS]
    if any(present):
        if not all(present):
            missing = [k for k, ok in zip(SPARSE_KEYS, present) if not ok]
            raise CheckpointError(f"tensor {name}.{missing[0]!s} is missing (the layer's other sparse "
                                  "tensors are present)")
        return "sparse"
    if f"{name}.weight_packed" in reader:
        return "packed"
    if f"{name}.weight" in reader:
        return "int8" if reader.shape_dtype(f"{name}.weight")[1] == "I8" else "dense"
    return None


def _float_dtype(module: nn.Module, fallback: torch.dtype) -> torch.dtype:
    dtype = module.weight.dtype
    return dtype if dtype in FLOAT_DTYPES else fallback


def _bias(reader: TensorReader, name: str, module: nn.Module, rows: int, dtype) -> Optional[torch.Tensor]:
    key = f"{name}.bias"
    has = getattr(module, "bias", None) is not None
    if not has:
        if key in reader:
            raise CheckpointError(f"tensor {key} is stored, but the model's layer has no bias")
        return None
    bias = reader.get(key)
    if bias.dtype not in FLOAT_DTYPES or tuple(bias.shape) != (rows,):
        raise CheckpointError(f"tensor {key}: must be a float tensor of shape ({rows},), got {bias.dtype} "
                              f"of shape {tuple(bias.shape)}")
    return bias.to(dtype)


def checked_shape(name: str, got: tuple[int, int], want: tuple[int, int], key: str) -> None:
    if tuple(got) != tuple(want):
        raise CheckpointError(f"tensor {name}.{key}: weight shape {tuple(got)} does not match the model's "
                              f"layer [out, in] = {tuple(want)}")


def stored_shape(reader: TensorReader, key: str) -> tuple[int, int]:
    t = reader.get(key)
    if t.dtype not in (torch.int32, torch.int64) or t.numel() != 2:
        raise CheckpointError(f"tensor {key}: must hold two integers (int32/int64), got {t.dtype} "
                              f"of shape {tuple(t.shape)}")
    rows, cols = (int(v) for v in t.flatten().tolist())
    if not (0 <= rows <= MAX_FEATURES and 0 <= cols <= MAX_FEATURES):
        raise CheckpointError(f"tensor {key}: weight shape ({rows}, {cols}) is out of range (each must be in "
                              f"[0, {MAX_FEATURES}])")
    return rows, cols


def _fill_dense(module: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    """Put a dense [out, in] weight into the model's own Linear / Conv1D."""
    w = weight.t().contiguous() if is_hf_conv1d(module) else weight.contiguous()
    module.weight = nn.Parameter(w, requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias, requires_grad=False)
    return module


def decode_layer(reader: TensorReader, name: str, module: nn.Module, kind: str, config: cc.CompressionConfig,
                 min_sparsity: float, notes: Notes) -> nn.Module:
    """The module to put at `name` for its stored tensors (kind from stored_kind, not 'dense')."""
    rows, cols = linear_features(module)
    try:
        if kind == "sparse":
            return _decode_sparse(reader, name, module, (rows, cols), config, min_sparsity, notes)
        return _decode_quantized(reader, name, module, (rows, cols), kind, config, notes)
    except CheckpointError:
        raise
    except FormatError as exc:
        values = "weight_packed" if kind == "packed" else "weight"
        stored = {"qweight": values, "q": values, "indices": values, "scale": "weight_scale"}
        key = stored.get(exc.array, exc.array)
        raise CheckpointError(f"tensor {name}.{key}: {exc.detail}" if key else f"layer {name}: {exc}") from None


def _decode_sparse(reader, name, module, features, config, min_sparsity, notes) -> nn.Module:
    fmt = config.sparsity_format
    spec = cc.sparse_format(fmt, int8_values=False)
    if spec is None:
        raise CheckpointError(f"tensor {name}.compressed is stored, but config.json quantization_config."
                              f"sparsity_config.format is {fmt!r} (needs one of {list(cc.SPARSITY_FORMATS[1:])})")
    rows, cols = stored_shape(reader, f"{name}.shape")
    checked_shape(name, (rows, cols), features, "shape")
    if reader.shape_dtype(f"{name}.compressed")[1] == "I8":
        return _decode_sparse_int8(reader, name, module, (rows, cols), config, notes)
    arrays = {key: reader.optional(f"{name}.{key}") for key in spec.layer_cls.state_keys()}
    arrays["shape"] = (rows, cols)  # proved above
    compressed = arrays["compressed"]
    dtype = _float_dtype(module, compressed.dtype if compressed.dtype in FLOAT_DTYPES else torch.float32)
    bias = _bias(reader, name, module, rows, dtype)
    if spec.name == registry.GENERAL_SPARSITY_FORMAT:
        faster = _faster_than_general(name, arrays, (rows, cols), dtype, bias, min_sparsity, notes, module)
        if faster is not None:
            return faster
    return _with_weight(spec.layer_cls, spec.format_cls.from_canonical(arrays), bias, dtype)


def _faster_than_general(name, arrays, shape, dtype, bias, min_sparsity, notes, module) -> Optional[nn.Module]:
    """Unstructured (sparse-bitmask) data that runs faster another way: as 2:4 when its pattern
    is 2:4 and it is not very sparse, or dense below min_sparsity. None: keep the general format."""
    rows, cols = shape
    compressed, bitmask = arrays["compressed"], arrays["bitmask"]
    sparsity = 1 - compressed.numel() / max(1, rows * cols)  # the length is validated before any use
    if sparsity >= CSR_OVER_24_SPARSITY and sparsity >= min_sparsity:
        return None
    structured = registry.get("2:4")
    # The pattern decides from the bitmask bytes alone, before validation (which either route
    # below runs once: here, or in the general format's from_canonical); it only reads a uint8
    # array of the canonical shape, and anything else is left to that validation to name.
    as_24 = (sparsity < CSR_OVER_24_SPARSITY and isinstance(bitmask, torch.Tensor)
             and bitmask.dtype == torch.uint8 and bitmask.device.type == "cpu"
             and tuple(bitmask.shape) == (rows, -(-cols // 8))
             and structured.format_cls.first_violation_bitmask(bitmask, cols) is None)
    if not as_24 and sparsity >= min_sparsity:
        return None
    general = registry.get(registry.GENERAL_SPARSITY_FORMAT)
    general.format_cls.validate_bitmask(compressed, bitmask, (rows, cols), arrays.get("row_offsets"))
    mask = host.as_numpy(unpack_bits(bitmask, cols))
    dense = host.from_numpy(host.expand(host.as_numpy(compressed), mask), compressed.dtype)
    if as_24:
        return _with_weight(structured.layer_cls, structured.format_cls.from_dense(dense), bias, dtype)
    if sparsity < min_sparsity:
        notes.add(f"sparse-bitmask layers below min_sparsity={min_sparsity} run dense (no sparse kernel "
                  "pays there)", name)
        return _fill_dense(module, dense.to(dtype), bias)
    return None


def _decode_sparse_int8(reader, name, module, features, config, notes) -> nn.Module:
    """A sparse layout holding int8 values (compressed-tensors' sparse + int-quantized composite)
    with weight_scale beside them -> CsrInt8Linear / Sparse24Int8Linear, or the float sparse
    layer of the dequantized weight where the sparse int8 kernels cannot run it."""
    fmt = config.sparsity_format
    key = f"{name}.compressed"
    spec = cc.sparse_format(fmt, int8_values=True)
    scheme = config.scheme_for(name, module)
    if scheme is None:
        raise CheckpointError(f"tensor {key} holds int8 values, but no config_groups entry of config.json "
                              f"quantization_config targets layer {name} (its weight_scale and scheme)")
    if scheme.format not in cc.SPARSE_QUANT_FORMATS:
        raise CheckpointError(f"tensor {key} holds int8 values, but the config names {scheme.format!r} for {name} "
                              f"(the int8 values of a sparse layer are {cc.INT_QUANTIZED!r})")
    if spec is None:
        raise CheckpointError(f"tensor {key} holds int8 values, but no registered format stores int8 values in {fmt}")
    if not scheme.symmetric:
        raise CheckpointError(f"layer {name}: asymmetric int8 weights in a sparse layout are not supported (a pruned "
                              "weight is 0, which an asymmetric grid does not hold)")
    if f"{name}.weight_g_idx" in reader:
        raise CheckpointError(f"tensor {name}.weight_g_idx: activation-order (g_idx) weights are not supported")
    rows, cols = features
    scale = _stored_scale(reader, name, scheme, rows)
    group_size = scheme.group_size
    if group_size is not None and group_size >= cols:
        group_size = None  # one group per row: per channel
    scale = _per_group(scale, rows, cols, group_size, name)
    zero_point = _zero_points(reader, name, "int8", scheme, scale.shape)
    if zero_point is not None and bool((zero_point != 0).any()):
        raise CheckpointError(f"tensor {name}.weight_zero_point: must be all zero (the config says the weights of "
                              f"{name} are symmetric)")
    dtype = _float_dtype(module, scale.dtype)
    bias = _bias(reader, name, module, rows, dtype)
    arrays = {k: reader.optional(f"{name}.{k}") for k in spec.format_cls.canonical_keys() if k != "weight_scale"}
    arrays.update(shape=(rows, cols), weight_scale=scale)  # both proved above
    rank = COMPRESSED_RANK.get(fmt)
    if rank is not None and arrays["compressed"].dim() != rank:
        raise CheckpointError(f"tensor {key}: must be {rank}-D in {fmt}, got int8 of shape "
                              f"{tuple(arrays['compressed'].shape)}")
    why = (f"in_features {cols} > {SPARSE_INT8_MAX_COLS}" if cols > SPARSE_INT8_MAX_COLS
           else f"group_size {group_size} is not a multiple of {GROUP_MULTIPLE}"
           if group_size is not None and group_size % GROUP_MULTIPLE else None)
    try:
        if why is None:
            if scheme.act_note:
                notes.add(scheme.act_note, name)
            weight = spec.format_cls.from_canonical(arrays, group_size, dtype)
            return _with_weight(spec.layer_cls, weight, bias, dtype, act=scheme.act)
        floats = cc.sparse_format(fmt, int8_values=False)
        q = floats.format_cls.from_canonical(dict(arrays, compressed=arrays["compressed"].float())).to_dense()
    except FormatError as exc:
        stored = {"qweight": "compressed", "scale": "weight_scale"}.get(exc.array, exc.array)
        raise CheckpointError(f"tensor {name}.{stored}: {exc.detail}" if stored else f"layer {name}: {exc}") from None
    notes.add(f"sparse int8 weights that the sparse int8 kernels cannot run ({why}) run dequantized as "
              f"{floats.name} float weights", name)
    dense = _dequantize(q, scale, torch.zeros_like(scale), group_size).to(dtype)
    return _with_weight(floats.layer_cls, floats.format_cls.from_dense(dense), bias, dtype)


def _stored_scale(reader, name: str, scheme: cc.WeightScheme, rows: int) -> torch.Tensor:
    """The layer's weight_scale in a float dtype; a per-tensor scale repeated for every row."""
    scale = reader.get(f"{name}.weight_scale")
    if scale.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"tensor {name}.weight_scale: dtype must be one of {FLOAT_DTYPES}, got {scale.dtype}")
    if scheme.strategy == "tensor":
        if scale.numel() != 1:
            raise CheckpointError(f"tensor {name}.weight_scale: per-tensor scale must hold one value, "
                                  f"got shape {tuple(scale.shape)}")
        scale = scale.reshape(1, 1).expand(rows, 1).contiguous()
    return scale


def _with_weight(layer_cls, weight, bias: Optional[torch.Tensor], dtype: torch.dtype, **attrs) -> nn.Module:
    return layer_cls.from_weight(weight.to(dtype) if weight.dtype != dtype else weight, bias, **attrs)


def _decode_quantized(reader, name, module, features, kind, config, notes) -> nn.Module:
    scheme = config.scheme_for(name, module)
    key = f"{name}.weight_packed" if kind == "packed" else f"{name}.weight"
    if scheme is None:
        raise CheckpointError(f"tensor {key} is quantized, but no config_groups entry of config.json "
                              f"quantization_config targets layer {name}")
    if scheme.format == cc.CODEBOOK:
        return _decode_codebook(reader, name, module, features, kind, scheme, notes)
    if f"{name}.weight_codebook" in reader:
        raise CheckpointError(f"tensor {name}.weight_codebook is stored, but the config names {scheme.format!r} "
                              f"for {name} (codebook layers are a {cc.CODEBOOK!r} config group)")
    rows, cols = features
    if kind == "packed":
        if scheme.format != cc.PACK_QUANTIZED:
            raise CheckpointError(f"tensor {key} is pack-quantized, but the config names {scheme.format!r} for {name}")
        checked_shape(name, stored_shape(reader, f"{name}.weight_shape"), features, "weight_shape")
        q = unpack_int32(reader.get(key), scheme.num_bits, cols, key)
    else:
        q = reader.get(key)
    if q.dtype != torch.int8 or q.dim() != 2:
        raise CheckpointError(f"tensor {key}: must be 2-D int8, got {q.dtype} of shape {tuple(q.shape)}")
    checked_shape(name, tuple(q.shape), features, key.rsplit(".", 1)[1])
    for extra in ("weight_g_idx",):
        if f"{name}.{extra}" in reader:
            raise CheckpointError(f"tensor {name}.{extra}: activation-order (g_idx) weights are not supported")
    scale = _stored_scale(reader, name, scheme, rows)
    dtype = _float_dtype(module, scale.dtype)
    bias = _bias(reader, name, module, rows, dtype)
    group_size = scheme.group_size
    if group_size is not None and (group_size > cols or (scheme.num_bits == 4 and group_size >= cols)):
        group_size = None  # one group per row: per channel
    scale = _per_group(scale, rows, cols, group_size, name)
    zero_point = _zero_points(reader, name, kind, scheme, scale.shape)
    if scheme.num_bits == 4:
        return _decode_4_bit(name, module, q, scale, zero_point, group_size, dtype, bias, scheme, notes)
    asymmetric = not scheme.symmetric or (zero_point is not None and bool((zero_point != 0).any()))
    runs_int8 = not asymmetric and cols <= MAX_COLS and (group_size is None or group_size % GROUP_MULTIPLE == 0)
    if runs_int8:
        if scheme.act_note:
            notes.add(scheme.act_note, name)
        spec = registry.for_quant_bits(8)
        weight = spec.format_cls.from_quantized(q, scale, group_size, dtype=dtype)
        return _with_weight(spec.layer_cls, weight, bias, dtype, act=scheme.act)
    why = ("asymmetric" if asymmetric else f"in_features {cols} > {MAX_COLS}" if cols > MAX_COLS
           else f"group_size {group_size} is not a multiple of {GROUP_MULTIPLE}")
    notes.add(f"quantized weights that the int8 kernels cannot run ({why}) are dequantized to dense", name)
    zp = torch.zeros_like(scale) if zero_point is None else zero_point.float()
    return _fill_dense(module, _dequantize(q, scale, zp, group_size).to(dtype), bias)


def _decode_4_bit(name, module, q, scale, zero_point, group_size, dtype, bias, scheme, notes) -> nn.Module:
    """4-bit weights onto the int4 lookup kernels (symmetric or asymmetric, per channel or per
    group of a multiple of 32 columns), else dequantized to dense."""
    rows, cols = q.shape
    spec = registry.for_quant_bits(4)
    why = (f"in_features {cols} > {LUT4_MAX_COLS}" if cols > LUT4_MAX_COLS
           else f"group_size {group_size} is not a multiple of {GROUP_MULTIPLE}"
           if group_size is not None and group_size % GROUP_MULTIPLE else
           "no 4-bit format is registered" if spec is None else None)
    if why is None:
        if scheme.act_note:
            notes.add(scheme.act_note, name)
        weight = spec.format_cls.from_quantized(q, scale, zero_point, group_size, dtype)
        return _with_weight(spec.layer_cls, weight, bias, dtype, act=scheme.act)
    notes.add(f"4-bit weights that the int4 kernels cannot run ({why}) are dequantized to dense", name)
    zp = torch.zeros_like(scale) if zero_point is None else zero_point.float()
    return _fill_dense(module, _dequantize(q, scale, zp, group_size).to(dtype), bias)


def _decode_codebook(reader, name, module, features, kind, scheme, notes) -> nn.Module:
    """A sparseinfer-codebook layer: weight_packed (4-bit indices, pack-quantized packing),
    weight_codebook [rows, groups, 16] and weight_shape, into the codebook format's layer."""
    rows, cols = features
    if kind != "packed":
        raise CheckpointError(f"layer {name}: the config names {cc.CODEBOOK!r}, which stores weight_packed, "
                              f"weight_codebook and weight_shape, but {name}.weight_packed is missing")
    for extra in ("weight_scale", "weight_zero_point", "weight_g_idx"):
        if f"{name}.{extra}" in reader:
            raise CheckpointError(f"tensor {name}.{extra} is stored, but {cc.CODEBOOK} layers have none "
                                  "(their tables hold the values)")
    key = f"{name}.weight_packed"
    checked_shape(name, stored_shape(reader, f"{name}.weight_shape"), features, "weight_shape")
    q = unpack_int32(reader.get(key), cc.CODEBOOK_INDEX_BITS, cols, key)
    checked_shape(name, tuple(q.shape), features, "weight_packed")
    indices = (q.to(torch.int16) + 8).to(torch.uint8)
    table = reader.get(f"{name}.weight_codebook")
    if table.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"tensor {name}.weight_codebook: dtype must be one of {FLOAT_DTYPES}, got {table.dtype}")
    group_size = scheme.group_size
    if group_size is not None and group_size >= cols:
        group_size = None  # one table per row
    dtype = _float_dtype(module, table.dtype)
    bias = _bias(reader, name, module, rows, dtype)
    spec = registry.get("codebook")
    if cols > LUT4_MAX_COLS:
        spec.format_cls._check_table(table, rows, cols, group_size)
        notes.add(f"codebook weights that the lookup kernels cannot run (in_features > {LUT4_MAX_COLS}) are "
                  "expanded to dense", name)
        col_group = torch.arange(cols) // (cols if group_size is None else group_size)
        dense = table.float()[torch.arange(rows).unsqueeze(1), col_group.unsqueeze(0), indices.to(torch.int64)]
        return _fill_dense(module, dense.to(dtype), bias)
    if scheme.act_note:
        notes.add(scheme.act_note, name)
    weight = spec.format_cls.from_indices(indices, table, group_size, dtype)
    return _with_weight(spec.layer_cls, weight, bias, dtype, act=scheme.act)


def _per_group(scale: torch.Tensor, rows: int, cols: int, group_size: Optional[int], name: str) -> torch.Tensor:
    groups = 1 if group_size is None else -(-cols // group_size)
    if scale.dim() == 1 and groups == 1:
        scale = scale.unsqueeze(-1)
    if tuple(scale.shape) != (rows, groups):
        raise CheckpointError(f"tensor {name}.weight_scale: shape must be {(rows, groups)} for a {rows}x{cols} "
                              f"weight with group_size={group_size}, got {tuple(scale.shape)}")
    bad = ~torch.isfinite(scale) | (scale < 0)
    if bool(bad.any()):
        r, g = (int(v) for v in bad.nonzero()[0])
        raise CheckpointError(f"tensor {name}.weight_scale: [{r}, {g}] is {float(scale[r, g])}; scales must be "
                              "finite and >= 0")
    return scale


def _zero_points(reader, name: str, kind: str, scheme: cc.WeightScheme, shape) -> Optional[torch.Tensor]:
    """The stored zero points as int8 [rows, groups], validated, or None if none are stored.
    pack-quantized group / channel zero points are int32 packed along dim 0 (compressed-tensors'
    layout); otherwise one integer per (row, group) (or one per tensor)."""
    key = f"{name}.weight_zero_point"
    rows, groups = shape
    stored = reader.optional(key)
    packed_dim0 = kind == "packed" and scheme.strategy in ("group", "channel")
    if stored is None:
        if packed_dim0 and not scheme.symmetric:
            raise CheckpointError(f"tensor {key} is missing (the config says the weights of {name} are "
                                  "asymmetric)")
        return None
    bits = scheme.num_bits
    if packed_dim0:
        return unpack_int32_dim0(stored, bits, rows, groups, key)
    if stored.dtype.is_floating_point or stored.dtype == torch.bool or stored.numel() not in (rows * groups, 1) \
            or (stored.numel() == 1 and scheme.strategy != "tensor" and rows * groups != 1):
        raise CheckpointError(f"tensor {key}: must be an integer tensor with {rows * groups} values, "
                              f"got {stored.dtype} of shape {tuple(stored.shape)}")
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bool(((stored < low) | (stored > high)).any()):
        raise CheckpointError(f"tensor {key}: values must lie in [{low}, {high}] for {bits}-bit weights")
    return stored.reshape(-1, 1).expand(rows, groups).to(torch.int8) if stored.numel() == 1 \
        else stored.reshape(shape).to(torch.int8)


def _dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    cols = q.shape[1]
    per_col = (lambda t: t.expand(-1, cols)) if group_size is None else (
        lambda t: t.repeat_interleave(group_size, dim=1)[:, :cols])
    return (q.float() - per_col(zero_point)) * per_col(scale.float())
