"""compressed-tensors 0.14 (the last release that writes sparse formats) against our sparse int8
checkpoints (csr+int8, 2:4+int8), both directions. Its composite of a sparse model quantized to int8
is a sparsity_config (sparse-bitmask / sparse-24-bitmask) plus an int-quantized config group on the
same layers: ModelCompressor quantizes first, then its sparse compressor compresses the int8 weight,
so ``compressed`` holds int8 values and ``weight_scale`` lies beside them."""
import json
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import sparseinfer
from sparseinfer import Int8Linear, Sparse24Linear, reference
from sparseinfer.nn import CsrInt8Linear, Sparse24Int8Linear
from sparseinfer.compress import prune_2_4
from sparseinfer.formats import CsrInt8, Sparse24Int8

pytest.importorskip("compressed_tensors", reason="compressed-tensors is an optional test dependency "
                                                 "(pip install '.[compat]')")
transformers = pytest.importorskip("transformers", reason="compressed-tensors checkpoints are Hugging Face models")

from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.config import SparsityCompressionConfig  # noqa: E402
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,  # noqa: E402
                                             QuantizationScheme, apply_quantization_config)
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IDS = torch.tensor([[5, 17, 33, 2, 90, 41, 8, 60]])
X = {cols: torch.randn(5, cols, generator=torch.Generator().manual_seed(cols)) for cols in (64, 128)}
SPARSITY = {"sparse-bitmask": ("unstructured", CsrInt8Linear, CsrInt8, "csr+int8"),
            "sparse-24-bitmask": ("2:4", Sparse24Int8Linear, Sparse24Int8, "2:4+int8")}
CASES = [("sparse-bitmask", "dynamic", None), ("sparse-bitmask", "none", 32),
         ("sparse-24-bitmask", "dynamic", 32), ("sparse-24-bitmask", "none", None)]


def _llama(seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()


def _projections(model):
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJECTIONS}


def _pruned_llama(fmt):
    model = _llama()
    with torch.no_grad():
        for layer in _projections(model).values():
            w = layer.weight
            if fmt == "sparse-24-bitmask":
                w.copy_(prune_2_4(w))
            else:  # 50% unstructured
                w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    return model


def _config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)["quantization_config"]


def _write_theirs(directory, fmt, act, group_size, quant_format="int-quantized"):
    """A sparse int8 checkpoint written by compressed-tensors' own lifecycle: min-max scales from
    its calculate_qparams, the per-module format from ModelCompressor.from_pretrained_model (it
    infers int-quantized for W8A8; weight-only needs it named, as llm-compressor's
    quantization_format does, else it infers pack-quantized or marlin-24)."""
    model = _pruned_llama(fmt)
    strategy = {"strategy": "channel"} if group_size is None else {"strategy": "group", "group_size": group_size}
    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, **strategy)
    acts = QuantizationArgs(num_bits=8, type="int", strategy="token", dynamic=True, symmetric=True) \
        if act == "dynamic" else None
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    for layer in _projections(model).values():
        w = layer.weight.data
        grouped = w if group_size is None else w.reshape(w.shape[0], -1, group_size)
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), weights)
        layer.weight_scale.data = scale.to(layer.weight_scale.dtype).reshape(layer.weight_scale.shape)
        layer.weight_zero_point.data = zero.reshape(layer.weight_zero_point.shape)
    structure = SPARSITY[fmt][0]
    sparsity = SparsityCompressionConfig.load_from_registry(fmt, targets=["Linear"], ignore=["lm_head"],
                                                            global_sparsity=0.5, sparsity_structure=structure)
    with warnings.catch_warnings():  # weight-only 2:4 infers marlin-24, deprecated (we name int-quantized)
        warnings.simplefilter("ignore", DeprecationWarning)
        compressor = ModelCompressor.from_pretrained_model(model, sparsity_config_or_format=sparsity,
                                                           quantization_format=quant_format)
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(directory)


def _their_int8(directory, compressor):
    """Per projection: (int8 weight as compressed-tensors' own sparse compressor decompresses the
    stored arrays, stored weight_scale)."""
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    out = {}
    for name in _projections(_llama()):
        data = {k: tensors[f"{name}.{k}"] for k in compressor.sparsity_compressor.compression_param_names}
        q = compressor.sparsity_compressor.decompress_weight(data)
        assert q.dtype == torch.int8
        out[name] = (q, tensors[f"{name}.weight_scale"])
    return out


def _assert_runs_like(layer, weight, act):
    """The loaded layer's output against the reference on the weight the file holds."""
    x = X[weight.cols]
    with torch.no_grad():
        y = layer(x)
    if act == "dynamic":
        assert torch.equal(y, reference.sparse_int8_linear(x, weight, None, act)), "W8A8 is bit-exact to the reference"
    else:
        torch.testing.assert_close(y, F.linear(x, weight.to_dense()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt, act, group_size", CASES, ids=str)
def test_load_their_sparse_int8_checkpoint(tmp_path, fmt, act, group_size):
    _write_theirs(tmp_path, fmt, act, group_size)
    qc = _config(tmp_path)
    assert qc["format"] == "int-quantized" and qc["sparsity_config"]["format"] == fmt
    assert (qc["config_groups"]["group_0"]["input_activations"] is None) == (act == "none")
    assert "sparseinfer_sparse" not in qc  # theirs: read as version 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = sparseinfer.load(tmp_path)
    _, layer_cls, format_cls, format_name = SPARSITY[fmt]
    layers = _projections(ours)
    assert {(type(m), m.act, m.group_size) for m in layers.values()} == {(layer_cls, act, group_size)}
    written = _their_int8(tmp_path, ModelCompressor.from_pretrained(str(tmp_path)))
    if (fmt, group_size) == ("sparse-bitmask", None):  # its grid (absmax / 127.5) reaches -128
        assert min(int(q.min()) for q, _ in written.values()) == -128
    for name, layer in layers.items():
        q, scale = written[name]
        assert torch.equal(layer.weight.qweight(), q), name
        assert torch.equal(layer.weight.scale(), scale.float()), name
        _assert_runs_like(layer, format_cls.from_quantized(q, scale, group_size), act)
    assert ours.generate(IDS[:, :3], max_new_tokens=3, do_sample=False).shape == (1, 6)
    info = {layer.name: layer for layer in sparseinfer.inspect(tmp_path).layers}
    row = info["model.layers.0.mlp.down_proj"]
    assert row.format == f"{fmt} int8" and 0.5 <= row.sparsity < 0.6 and row.bits_per_weight < 8


@pytest.mark.parametrize("fmt, act, group_size", CASES, ids=str)
def test_their_decompressor_reads_our_sparse_int8_checkpoint(tmp_path, fmt, act, group_size):
    ours = _pruned_llama(fmt)
    format_name = SPARSITY[fmt][3]
    report = sparseinfer.sparsify(ours, format_name, filter=lambda name, m: name in _projections(ours), act=act,
                                  group_size=group_size)
    assert len(report.converted) == 7
    sparseinfer.save(ours, tmp_path)
    compressor = ModelCompressor.from_pretrained(str(tmp_path))
    assert compressor.sparsity_config.format == fmt
    assert set(compressor.quantization_compressor) == {"int-quantized"}
    (scheme,) = compressor.quantization_config.config_groups.values()
    assert (scheme.input_activations is None) == (act == "none")
    assert scheme.weights.num_bits == 8 and scheme.weights.symmetric and scheme.weights.group_size == group_size
    # its sparse compressor recovers our int8 values, its int-quantized compressor our dequantized weights
    written = _their_int8(tmp_path, compressor)
    for name, layer in _projections(ours).items():
        q, scale = written[name]
        assert torch.equal(q, layer.weight.qweight()) and torch.equal(scale.float(), layer.weight.scale()), name
        dense = compressor.quantization_compressor["int-quantized"].decompress_weight(
            compressed_data={"weight": q, "weight_scale": scale}, quantization_args=scheme.weights)
        assert torch.equal(dense, layer.weight.to_dense()), name
    # its whole-model decompress: the same values, except that it makes the scales fp16 (it sizes them
    # by the int8 weight its sparse pass left, a non-float dtype; true of its own composites too)
    theirs = _llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compressor.decompress(str(tmp_path), theirs)
    theirs_layers = _projections(theirs)
    for name, layer in _projections(ours).items():
        q, scale = layer.weight.qweight(), layer.weight.scale().half()
        per_col = scale if group_size is None else scale.repeat_interleave(group_size, 1)
        assert torch.equal(theirs_layers[name].weight.detach(), q.half() * per_col), name
    with torch.no_grad():
        assert torch.equal(sparseinfer.load(tmp_path)(IDS).logits, ours(IDS).logits)


def test_their_weight_only_default_is_dense_pack_quantized(tmp_path):
    """Left to infer the format, compressed-tensors 0.14 writes an unstructured weight-only int8
    model as pack-quantized: the sparsity_config stays, but its sparse compressor finds no
    ``weight`` left to compress. Those files hold dense int8 and load as Int8Linear."""
    _write_theirs(tmp_path, "sparse-bitmask", "none", 32, quant_format=None)
    qc = _config(tmp_path)
    assert qc["format"] == "pack-quantized" and qc["sparsity_config"]["format"] == "sparse-bitmask"
    ours = sparseinfer.load(tmp_path)
    assert {(type(m), m.act, m.group_size) for m in _projections(ours).values()} == {(Int8Linear, "none", 32)}


def test_their_group_size_our_kernels_cannot_run_loads_dequantized(tmp_path):
    """Groups of 16 columns (not a multiple of 32): the layers run as float sparse weights of
    the dequantized values, with a warning naming them."""
    _write_theirs(tmp_path, "sparse-24-bitmask", "dynamic", 16)
    with pytest.warns(UserWarning, match=r"group_size 16 is not a multiple of 32\) run dequantized as 2:4"):
        ours = sparseinfer.load(tmp_path)
    written = _their_int8(tmp_path, ModelCompressor.from_pretrained(str(tmp_path)))
    for name, layer in _projections(ours).items():
        q, scale = written[name]
        assert type(layer) is Sparse24Linear
        assert torch.equal(layer.weight.to_dense(), q.float() * scale.repeat_interleave(16, 1)), name
