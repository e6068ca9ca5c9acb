"""Compatibility with the real compressed-tensors 0.14 (the last release with the sparse
compressors): checkpoints its ModelCompressor writes load in sparseinfer, and checkpoints
sparseinfer writes decompress in compressed-tensors, to the same weights and outputs."""
import warnings

import pytest
import torch

ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors is an optional test dependency "
                                                      "(pip install '.[compat]')")
transformers = pytest.importorskip("transformers", reason="compressed-tensors checkpoints are Hugging Face models")

from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.config import SparsityCompressionConfig  # noqa: E402
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,  # noqa: E402
                                             QuantizationScheme, apply_quantization_config)
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

import sparseinfer  # noqa: E402
from sparseinfer import CSRLinear, Int4Linear, Int8Linear, Sparse24Linear  # noqa: E402
from sparseinfer.compress import prune_2_4  # noqa: E402

CONFIG = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _llama(seed=0):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()


def _projections(model):
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJECTIONS}


def _prune(model, structure):
    with torch.no_grad():
        for layer in _projections(model).values():
            w = layer.weight
            if structure == "2:4":
                w.copy_(prune_2_4(w))
            else:
                w[w.abs() <= w.abs().flatten().kthvalue(int(0.8 * w.numel())).values] = 0
    return model


def _write_sparse(directory, fmt):
    model = _prune(_llama(), "2:4" if fmt == "sparse-24-bitmask" else "unstructured")
    config = SparsityCompressionConfig.load_from_registry(
        fmt, targets=["Linear"], ignore=["lm_head"], global_sparsity=0.8,
        sparsity_structure="2:4" if fmt == "sparse-24-bitmask" else "unstructured")
    compressor = ModelCompressor(sparsity_config=config)
    state = compressor.compress(model)
    model.save_pretrained(directory, state_dict=state)
    compressor.update_config(directory)


def _quant_args(bits, group_size):
    strategy = {"strategy": "channel"} if group_size is None else {"strategy": "group", "group_size": group_size}
    return QuantizationArgs(num_bits=bits, type="int", symmetric=True, **strategy)


def _write_quantized(directory, fmt, bits=8, group_size=None, w8a8=True):
    model = _llama()
    acts = QuantizationArgs(num_bits=8, type="int", strategy="token", dynamic=True, symmetric=True) if w8a8 else None
    scheme = QuantizationScheme(targets=["Linear"], weights=_quant_args(bits, group_size), input_activations=acts)
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"], format=fmt)
    apply_quantization_config(model, config)
    for layer in _projections(model).values():  # min-max calibration of the weight scales
        w = layer.weight.data
        grouped = w if group_size is None else w.reshape(w.shape[0], -1, group_size)
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), scheme.weights)
        layer.weight_scale.data = scale.to(layer.weight_scale.dtype).reshape(layer.weight_scale.shape)
        layer.weight_zero_point.data = zero.reshape(layer.weight_zero_point.shape)
    compressor = ModelCompressor(quantization_config=config)
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(directory)


def _decompressed_by_compressed_tensors(directory):
    """compressed-tensors' own reading of a checkpoint: the same-seed model (uncompressed tensors
    are unchanged from it) with every compressed layer decompressed by ModelCompressor."""
    model = _llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ModelCompressor.from_pretrained(str(directory)).decompress(str(directory), model)
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[5, 17, 33, 2, 90, 41, 8, 60], [1, 2, 3, 4, 5, 6, 7, 8]])


def _assert_same_weights(ours, theirs):
    theirs_layers = _projections(theirs)
    for name, layer in _projections(ours).items():
        assert torch.equal(layer.weight.to_dense(), theirs_layers[name].weight.detach()), name


def _assert_outputs_match(ours, theirs, w8a8):
    """Same weights, so weight-only outputs agree to float rounding. With W8A8 both sides
    quantize activations per token, with different conventions (compressed-tensors: absmax/127.5
    into [-128, 127]; ours: absmax/127): each is held to its error against the exact-activation
    output, ours within 2x theirs (the project's low-precision tolerance rule)."""
    if not w8a8:
        torch.testing.assert_close(_logits(ours, IDS), _logits(theirs, IDS), rtol=1e-4, atol=1e-5)
        return
    layers = [m for m in _projections(ours).values() if isinstance(m, Int8Linear)]
    for m in layers:
        m.act = "none"
    exact = _logits(ours, IDS)
    for m in layers:
        m.act = "dynamic"
    error = lambda y: float((y - exact).abs().max() / exact.abs().max())
    ours_error, theirs_error = error(_logits(ours, IDS)), error(_logits(theirs, IDS))
    assert 0 < theirs_error < 0.05
    assert ours_error <= 2 * theirs_error + 1e-4, (ours_error, theirs_error)


@pytest.mark.parametrize("fmt, layer_cls", [("sparse-bitmask", CSRLinear), ("sparse-24-bitmask", Sparse24Linear)])
def test_load_their_sparse_checkpoint(tmp_path, fmt, layer_cls):
    _write_sparse(tmp_path, fmt)
    ours = sparseinfer.load(tmp_path)
    assert {type(m) for m in _projections(ours).values()} == {layer_cls}
    reference = _prune(_llama(), "2:4" if layer_cls is Sparse24Linear else "unstructured")
    _assert_same_weights(ours, reference)
    torch.testing.assert_close(_logits(ours, IDS), _logits(reference, IDS), rtol=1e-4, atol=1e-5)
    assert ours.generate(IDS[:1, :3], max_new_tokens=4, do_sample=False).shape == (1, 7)


@pytest.mark.parametrize("fmt, group_size", [("int-quantized", None), ("pack-quantized", None),
                                             ("pack-quantized", 32)])
@pytest.mark.parametrize("w8a8", [False, True], ids=["weight-only", "w8a8"])
def test_load_their_int8_checkpoint(tmp_path, fmt, group_size, w8a8):
    _write_quantized(tmp_path, fmt, group_size=group_size, w8a8=w8a8)
    ours = sparseinfer.load(tmp_path)
    layers = _projections(ours).values()
    assert {type(m) for m in layers} == {Int8Linear}
    assert {m.act for m in layers} == {"dynamic" if w8a8 else "none"}
    assert {m.group_size for m in layers} == {group_size}
    theirs = _decompressed_by_compressed_tensors(tmp_path)
    _assert_same_weights(ours, theirs)
    _assert_outputs_match(ours, theirs, w8a8)


def test_load_their_4_bit_checkpoint_into_int4_layers(tmp_path):
    _write_quantized(tmp_path, "pack-quantized", bits=4, group_size=32, w8a8=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = sparseinfer.load(tmp_path)
    assert {(type(m), m.act, m.group_size) for m in _projections(ours).values()} == {(Int4Linear, "none", 32)}
    theirs = _decompressed_by_compressed_tensors(tmp_path)
    _assert_same_weights(ours, theirs)
    torch.testing.assert_close(_logits(ours, IDS), _logits(theirs, IDS), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("fmt, options, quant_format", [
    ("csr", {}, "int-quantized"), ("2:4", {}, "int-quantized"),
    ("int8", {"act": "dynamic"}, "int-quantized"), ("int8", {"act": "none", "group_size": 32}, "int-quantized"),
    ("int8", {"act": "dynamic"}, "pack-quantized")], ids=str)
def test_their_decompressor_reads_our_checkpoint(tmp_path, fmt, options, quant_format):
    ours = _llama()
    if fmt != "int8":
        _prune(ours, "2:4" if fmt == "2:4" else "unstructured")
    report = sparseinfer.sparsify(ours, fmt, filter=lambda name, m: name in _projections(ours), **options)
    assert len(report.converted) == 14
    sparseinfer.save(ours, tmp_path, quant_format=quant_format)
    theirs = _decompressed_by_compressed_tensors(tmp_path)
    _assert_same_weights(ours, theirs)
    _assert_outputs_match(ours, theirs, options.get("act") == "dynamic")
    # and the round trip through our own loader is exact
    assert torch.equal(_logits(sparseinfer.load(tmp_path), IDS), _logits(ours, IDS))
