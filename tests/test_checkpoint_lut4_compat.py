"""compressed-tensors 0.14 against our 4-bit checkpoints, both directions: its W4A16 files load into
Int4Linear with its own dequantized weights, it decompresses our int4 saves to the same weights, it reads
each group of a mixed checkpoint and refuses a codebook one."""
import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import sparseinfer
from sparseinfer import CodebookLinear, CSRLinear, Int4Linear, Int8Linear
from sparseinfer.checkpoint import CheckpointError
from sparseinfer.checkpoint.int_packing import pack_int32, pack_int32_dim0, unpack_int32_dim0
from checkpoint_models import mlp
from lut4_checkpoints import (X, _assert_same_model, _compressed, _config, _keys, _quiet_load,  # noqa: F401
                              codebook_checkpoint)

# ---------------------------------------------------------------------------------------------- compressed-tensors
try:  # optional test dependencies: only the tests below need them
    import transformers
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.quantized_compressors.pack_quantized import pack_to_int32
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.utils import calculate_qparams
except ImportError:
    ModelCompressor = None
needs_ct = pytest.mark.skipif(ModelCompressor is None, reason="compressed-tensors and transformers are optional "
                                                              "test dependencies (pip install '.[compat]')")

CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IDS = torch.tensor([[5, 17, 33, 2, 90, 41, 8, 60], [1, 2, 3, 4, 5, 6, 7, 8]])


def _llama(seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()


def _projections(model):
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJECTIONS}


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _write_w4a16(directory, group_size, symmetric):
    """A W4A16 checkpoint written by compressed-tensors' own ModelCompressor (min-max weights)."""
    model = _llama()
    strategy = {"strategy": "channel"} if group_size is None else {"strategy": "group", "group_size": group_size}
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, **strategy)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                                ignore=["lm_head"], format="pack-quantized")
    apply_quantization_config(model, config)
    for layer in _projections(model).values():
        w = layer.weight.data
        grouped = w if group_size is None else w.reshape(w.shape[0], -1, group_size)
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), weights)
        layer.weight_scale.data = scale.to(layer.weight_scale.dtype).reshape(layer.weight_scale.shape)
        layer.weight_zero_point.data = zero.to(layer.weight_zero_point.dtype).reshape(layer.weight_zero_point.shape)
    compressor = ModelCompressor(quantization_config=config)
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(directory)


def _decompressed_by_compressed_tensors(directory):
    model = _llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ModelCompressor.from_pretrained(str(directory)).decompress(str(directory), model)
    return model.eval()


@needs_ct
@pytest.mark.parametrize("group_size", [32, None], ids=["group32", "channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_load_their_w4a16_checkpoint(tmp_path, group_size, symmetric):
    _write_w4a16(tmp_path, group_size, symmetric)
    keys = _keys(tmp_path)
    zp = keys.get("model.layers.0.self_attn.q_proj.weight_zero_point")
    assert (zp is None) == symmetric
    if not symmetric:  # their layout: int32 packed along dim 0
        assert zp == ("I32", (64 // 8, 1 if group_size is None else 64 // group_size))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = sparseinfer.load(tmp_path)
    layers = _projections(ours)
    assert {(type(m), m.act, m.group_size) for m in layers.values()} == {(Int4Linear, "none", group_size)}
    if not symmetric:
        assert not all(m.symmetric for m in layers.values())
    theirs = _decompressed_by_compressed_tensors(tmp_path)
    theirs_layers = _projections(theirs)
    for name, layer in layers.items():
        assert torch.equal(layer.weight.to_dense(), theirs_layers[name].weight.detach()), name
    torch.testing.assert_close(_logits(ours), _logits(theirs), rtol=1e-4, atol=1e-4)


@needs_ct
@pytest.mark.parametrize("group_size", [32, None], ids=["group32", "channel"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_their_decompressor_reads_our_int4_checkpoint(tmp_path, group_size, symmetric):
    ours = _llama()
    report = sparseinfer.sparsify(ours, "int4", filter=lambda name, m: name in _projections(ours), act="none",
                                  group_size=group_size, symmetric=symmetric)
    assert len(report.converted) == 14
    sparseinfer.save(ours, tmp_path)
    theirs = _decompressed_by_compressed_tensors(tmp_path)
    theirs_layers = _projections(theirs)
    for name, layer in _projections(ours).items():
        assert torch.equal(layer.weight.to_dense(), theirs_layers[name].weight.detach()), name
    torch.testing.assert_close(_logits(ours), _logits(theirs), rtol=1e-4, atol=1e-4)
    assert torch.equal(_logits(sparseinfer.load(tmp_path)), _logits(ours))


@needs_ct
def test_zero_point_packing_is_compressed_tensors(tmp_path):
    for rows, groups in ((1, 1), (7, 3), (8, 2), (130, 5)):
        zero = torch.randint(-8, 8, (rows, groups), dtype=torch.int8)
        assert torch.equal(pack_int32_dim0(zero, 4), pack_to_int32(zero, 4, packed_dim=0))
        assert torch.equal(unpack_int32_dim0(pack_to_int32(zero, 4, packed_dim=0), 4, rows, groups, "z"), zero)


@needs_ct
def test_compressed_tensors_reads_each_group_of_a_mixed_checkpoint(tmp_path):
    """int8 int-quantized + int4 pack-quantized under mixed-precision: compressed-tensors parses
    the config and each group's compressor decompresses its layers to our weights."""
    torch.manual_seed(0)
    # compressed-tensors 0.14 infers group_size = in_features // groups when it decompresses, so
    # it misreads a partial last group: in_features here are multiples of the group size
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    sparseinfer.sparsify(model, "int8", filter=lambda name, m: name == "0")
    sparseinfer.sparsify(model, "int4", filter=lambda name, m: name == "2", symmetric=False, group_size=32)
    sparseinfer.sparsify(model, "int4", filter=lambda name, m: name == "4", group_size=None)
    sparseinfer.save(model, tmp_path)
    qc = _config(tmp_path)["quantization_config"]
    compressor = ModelCompressor.from_compression_config(qc)
    assert compressor.quantization_config.format == "mixed-precision"
    assert set(compressor.quantization_compressor) == {"int-quantized", "pack-quantized"}
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for scheme in compressor.quantization_config.config_groups.values():
        for name in scheme.targets:
            data = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".") and
                    not k.endswith(".bias")}
            dense = compressor.quantization_compressor[scheme.format].decompress_weight(
                compressed_data=data, quantization_args=scheme.weights)
            assert torch.equal(dense, model[int(name)].weight.to_dense()), name


@needs_ct
def test_compressed_tensors_refuses_a_codebook_checkpoint(tmp_path, codebook_checkpoint):
    """compressed-tensors (and so transformers / vLLM, which load through it) fails loudly on the
    codebook group's unknown format instead of loading those layers as something else; the
    config itself is still a valid compressed-tensors QuantizationConfig."""
    qc = _config(codebook_checkpoint)["quantization_config"]
    parsed = QuantizationConfig.model_validate(
        {k: v for k, v in qc.items() if k not in ("sparsity_config", "transform_config", "version")})
    assert "sparseinfer-codebook" in {g.format for g in parsed.config_groups.values()}
    with pytest.raises(Exception, match="sparseinfer-codebook"):
        ModelCompressor.from_compression_config(qc)


@needs_ct
def test_hugging_face_model_with_int4_and_codebook_layers_round_trips(tmp_path):
    """A Llama whose attention is int4 and MLP codebook: load builds it from config.json."""
    ours = _llama()
    sparseinfer.sparsify(ours, "int4", filter=lambda name, m: ".self_attn." in name, symmetric=False, group_size=32)
    sparseinfer.sparsify(ours, "codebook", filter=lambda name, m: ".mlp." in name, act="none")
    sparseinfer.save(ours, tmp_path)
    assert _config(tmp_path)["quantization_config"]["format"] == "mixed-precision"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = sparseinfer.load(tmp_path)
    kinds = {name.rsplit(".", 1)[-1]: type(m) for name, m in _projections(loaded).items()}
    assert kinds == {"q_proj": Int4Linear, "k_proj": Int4Linear, "v_proj": Int4Linear, "o_proj": Int4Linear,
                     "gate_proj": CodebookLinear, "up_proj": CodebookLinear, "down_proj": CodebookLinear}
    assert torch.equal(_logits(loaded), _logits(ours))
    info = sparseinfer.inspect(tmp_path)
    assert {layer.format for layer in info.layers if "proj" in layer.name} == {
        "pack-quantized int4 asym", "sparseinfer-codebook"}
