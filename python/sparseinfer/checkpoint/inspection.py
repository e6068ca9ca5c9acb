"""sparseinfer.inspect / `sparseinfer inspect DIR`: what a checkpoint holds, layer by layer
(format, shape, sparsity, stored bytes vs the dense weight, stored bits per weight), without
building a model."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..formats.bits import popcount
from ..nn.canonical_state import CanonicalWeightModule
from . import compression_config as cc
from .errors import CheckpointError
from .files import CONFIG_FILE, DTYPE_BYTES, TensorReader, read_json
from .int_packing import unpack_int32
from .layer_decode import Notes, decode_layer, stored_kind, stored_shape

_DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}  # the float dtypes
_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
DEFAULT_MIN_SPARSITY = 0.5  # load's default; it only picks the kernel, never what is valid


@dataclass
class LayerInfo:
    name: str
    format: str
    shape: tuple[int, int]
    dtype: str            # of the dense weight it stands for
    sparsity: float       # fraction of exact zeros in the weight
    stored_bytes: int     # the weight's tensors as stored (bias excluded)
    dense_bytes: int      # the same weight dense in `dtype`

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, scales / zero points / tables included (bias excluded)."""
        return 8 * self.stored_bytes / max(1, self.shape[0] * self.shape[1])


@dataclass
class CheckpointInfo:
    directory: str
    layers: list[LayerInfo] = field(default_factory=list)
    other_bytes: int = 0  # biases, norms, embeddings stored as-is: the same bytes both ways

    @property
    def stored_bytes(self) -> int:
        return self.other_bytes + sum(layer.stored_bytes for layer in self.layers)

    @property
    def dense_bytes(self) -> int:
        return self.other_bytes + sum(layer.dense_bytes for layer in self.layers)

    @property
    def compression_ratio(self) -> float:
        """Dense model bytes / stored bytes, over every tensor of the checkpoint."""
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def to_dict(self) -> dict:
        return {"directory": self.directory,
                "layers": [dict(asdict(layer), bits_per_weight=layer.bits_per_weight) for layer in self.layers],
                "other_bytes": self.other_bytes, "stored_bytes": self.stored_bytes,
                "dense_bytes": self.dense_bytes, "compression_ratio": self.compression_ratio}

    def __str__(self) -> str:
        width = max([5] + [len(layer.name) for layer in self.layers])
        fwidth = max([22] + [len(layer.format) for layer in self.layers])
        lines = [f"{'layer':{width}s} {'format':{fwidth}s} {'shape':>12s} {'dtype':>5s} {'sparsity':>8s} "
                 f"{'stored MB':>10s} {'dense MB':>10s} {'ratio':>6s} {'bits/w':>6s}"]
        for l in self.layers:
            lines.append(f"{l.name:{width}s} {l.format:{fwidth}s} {f'{l.shape[0]}x{l.shape[1]}':>12s} {l.dtype:>5s} "
                         f"{l.sparsity:8.3f} {l.stored_bytes / 1e6:10.3f} {l.dense_bytes / 1e6:10.3f} {l.ratio:6.2f} "
                         f"{l.bits_per_weight:6.2f}")
        lines.append(f"{'other tensors':{width}s} {'as stored':{fwidth}s} {'':>12s} {'':>5s} {'':>8s} "
                     f"{self.other_bytes / 1e6:10.3f} {self.other_bytes / 1e6:10.3f}")
        lines.append(f"total: {self.stored_bytes / 1e6:.3f} MB stored vs {self.dense_bytes / 1e6:.3f} MB dense, "
                     f"compression ratio {self.compression_ratio:.2f}x ({len(self.layers)} weight matrices)")
        return "\n".join(lines)


def inspect(directory: str) -> CheckpointInfo:
    """Per weight matrix: format, shape, sparsity and bytes vs dense. Every compressed layer goes
    through the load's own validation (layer_decode.decode_layer, into a meta Linear of the stored
    shape), so inspect raises CheckpointError on exactly the malformed data a load rejects, minus
    the checks that need the model."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory")
    config_path = os.path.join(directory, CONFIG_FILE)
    config_data = read_json(config_path) if os.path.exists(config_path) else {}
    config = cc.CompressionConfig.parse(config_data.get("quantization_config"))
    reader = TensorReader(directory)
    by_prefix: dict[str, set[str]] = defaultdict(set)
    for key in reader.keys():
        prefix, _, leaf = key.rpartition(".")
        by_prefix[prefix].add(leaf)
    info = CheckpointInfo(directory)
    weight_keys = set()
    for prefix, leaves in sorted(by_prefix.items()):
        layer = _describe(reader, prefix, leaves, config)
        if layer is not None:
            info.layers.append(layer)
            weight_keys |= {f"{prefix}.{leaf}" for leaf in leaves if leaf != "bias"}
    info.other_bytes = sum(reader.nbytes(k) for k in reader.keys() if k not in weight_keys)
    return info


def _describe(reader: TensorReader, prefix: str, leaves: set[str], config: cc.CompressionConfig):
    key = (lambda leaf: f"{prefix}.{leaf}" if prefix else leaf)
    kind = stored_kind(reader, prefix) if prefix else None
    if kind is None or kind == "dense":
        if "weight" not in leaves:
            return None
        shape, dtype = reader.shape_dtype(key("weight"))
        if len(shape) != 2 or dtype not in _DTYPE_NAMES:
            return None  # a norm, an embedding table in another dtype, ...: stored as-is
        stored = reader.nbytes(key("weight"))
        return _info(prefix, cc.DENSE, *shape, dtype, _zeros(reader.get(key("weight"))), stored)
    rows, cols, dtype, layer = _validated(reader, prefix, kind, config)
    stored = sum(reader.nbytes(key(leaf)) for leaf in leaves if leaf != "bias")
    if kind == "sparse" and reader.shape_dtype(key("compressed"))[1] == "I8":
        # int8 values + weight_scale; the zeros count from the values (a 2:4 layout may store zeros)
        return _info(prefix, f"{config.sparsity_format} int8", rows, cols, dtype, _weight_zeros(layer), stored)
    if kind == "sparse":
        nnz = int(popcount(reader.get(key("bitmask"))).sum())
        fmt = config.sparsity_format
        return _info(prefix, fmt, rows, cols, dtype, 1 - nnz / max(1, rows * cols), stored)
    scheme = config.scheme_for(prefix, _linear(rows, cols, False, torch.float32))
    if scheme.format == cc.CODEBOOK:
        return _info(prefix, cc.CODEBOOK, rows, cols, dtype, _weight_zeros(layer), stored)
    if kind == "packed" and scheme.num_bits == 4:
        fmt = f"{cc.PACK_QUANTIZED} int4" + ("" if f"{prefix}.weight_zero_point" not in reader else " asym")
        return _info(prefix, fmt, rows, cols, dtype, _weight_zeros(layer), stored)
    if kind == "packed":
        q = unpack_int32(reader.get(key("weight_packed")), scheme.num_bits, cols, key("weight_packed"))
        return _info(prefix, f"{cc.PACK_QUANTIZED} int{scheme.num_bits}", rows, cols, dtype, _zeros(q), stored)
    return _info(prefix, f"{cc.INT_QUANTIZED} int8", rows, cols, dtype, _zeros(reader.get(key("weight"))), stored)


def _validated(reader: TensorReader, name: str, kind: str, config: cc.CompressionConfig):
    """(rows, cols, float dtype of the weight it stands for, the decoded layer) of a compressed
    layer, after the load's validation of every array of it (shapes, counts, index ranges,
    scales, bias)."""
    if kind == "sparse":
        rows, cols = stored_shape(reader, f"{name}.shape")
        dtype = reader.shape_dtype(f"{name}.compressed")[1]
    elif kind == "packed":
        rows, cols = stored_shape(reader, f"{name}.weight_shape")
        dtype = "F32"
    else:
        shape, _ = reader.shape_dtype(f"{name}.weight")
        if len(shape) != 2:
            raise CheckpointError(f"tensor {name}.weight: must be 2-D int8, got int8 of shape {tuple(shape)}")
        rows, cols = shape
        dtype = "F32"
    if f"{name}.weight_scale" in reader:
        dtype = reader.shape_dtype(f"{name}.weight_scale")[1]
    torch_dtype = _TORCH_DTYPES.get(dtype, torch.float32)
    try:
        module = _linear(rows, cols, f"{name}.bias" in reader, torch_dtype)
    except RuntimeError as exc:  # a stated shape no tensor can have (its size overflows)
        raise CheckpointError(f"layer {name}: stated weight shape {(rows, cols)} is impossible ({exc})") from None
    layer = decode_layer(reader, name, module, kind, config, DEFAULT_MIN_SPARSITY, Notes())
    return rows, cols, dtype, layer


def _linear(rows: int, cols: int, bias: bool, dtype: torch.dtype) -> nn.Module:
    """A stand-in for the model's Linear (no memory): what load's decoding checks against."""
    return nn.Linear(cols, rows, bias=bias, device="meta", dtype=dtype)


def _weight_zeros(layer: nn.Module) -> float:
    """The fraction of exact zeros in a decoded layer's weight (one of ours, or a dense fallback)."""
    if isinstance(layer, CanonicalWeightModule):
        return layer.sparsity
    return _zeros(layer.weight)


def _zeros(t: torch.Tensor) -> float:
    return float((t == 0).sum()) / max(1, t.numel())


def _info(name, fmt, rows, cols, dtype, sparsity, stored) -> LayerInfo:
    return LayerInfo(name, fmt, (int(rows), int(cols)), _DTYPE_NAMES.get(dtype, dtype.lower()), sparsity,
                     stored, rows * cols * DTYPE_BYTES.get(dtype, 4))
