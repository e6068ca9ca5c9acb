"""sparseinfer.save / load / inspect on plain torch models: every format round trips exactly,
sharding, tied tensors, layer choice at load, the CLI."""
import json
import os
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import sparseinfer
from sparseinfer import CSRLinear, Int4Linear, Int8Linear, Sparse24Linear
from sparseinfer.checkpoint import CheckpointError
from sparseinfer.checkpoint.int_packing import pack_int32, unpack_int32
from checkpoint_models import compressed_mlp, mlp, pruned_mlp, read_config as _config

LAYER = {"csr": CSRLinear, "2:4": Sparse24Linear, "int8": Int8Linear}
CASES = [("csr", {}), ("2:4", {}), ("int8", {"act": "dynamic"}), ("int8", {"act": "none", "group_size": 64})]


def _keys(directory):
    keys = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), "pt") as f:
                keys.update({k: f.get_slice(k).get_dtype() for k in f.keys()})
    return keys


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quant_format", ["int-quantized", "pack-quantized"])
@pytest.mark.parametrize("fmt, options", CASES, ids=lambda v: str(v))
def test_round_trip_is_exact(tmp_path, fmt, options, quant_format, dtype):
    model = compressed_mlp(fmt, dtype, **options)
    x = torch.randn(5, 72, dtype=dtype)
    expected = model(x)
    sparseinfer.save(model, tmp_path, quant_format=quant_format)
    loaded = sparseinfer.load(tmp_path, mlp(dtype))
    assert [type(m) for m in loaded[::2]] == [LAYER[fmt]] * 3
    assert torch.equal(loaded(x), expected)
    assert not loaded.training
    if fmt == "int8":
        assert {m.act for m in loaded[::2]} == {options["act"]}
        assert {m.group_size for m in loaded[::2]} == {options.get("group_size")}


def test_layouts_written(tmp_path):
    """The tensor names, dtypes and config of each format follow compressed-tensors 0.14."""
    sparseinfer.save(compressed_mlp("csr"), tmp_path / "csr")
    assert {k: v for k, v in _keys(tmp_path / "csr").items() if k.startswith("0.")} == {
        "0.bias": "F32", "0.shape": "I64", "0.compressed": "F32", "0.bitmask": "U8", "0.row_offsets": "I64"}
    qc = _config(tmp_path / "csr")["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["version"] == "0.14.0"
    assert qc["sparsity_config"]["format"] == "sparse-bitmask"
    assert qc["sparsity_config"]["targets"] == ["0", "2", "4"]
    assert 0.7 < qc["sparsity_config"]["global_sparsity"] < 0.9

    sparseinfer.save(compressed_mlp("2:4"), tmp_path / "24")
    assert set(k for k in _keys(tmp_path / "24") if k.startswith("0.")) == {"0.bias", "0.shape", "0.compressed", "0.bitmask"}
    sc = _config(tmp_path / "24")["quantization_config"]["sparsity_config"]
    assert (sc["format"], sc["sparsity_structure"]) == ("sparse-24-bitmask", "2:4")

    sparseinfer.save(compressed_mlp("int8", group_size=32), tmp_path / "pack", quant_format="pack-quantized")
    keys = _keys(tmp_path / "pack")
    assert (keys["2.weight_packed"], keys["2.weight_scale"], keys["2.weight_shape"]) == ("I32", "F32", "I64")
    qc = _config(tmp_path / "pack")["quantization_config"]
    group = qc["config_groups"]["group_0"]
    assert qc["format"] == group["format"] == "pack-quantized"
    assert group["weights"] == {**group["weights"], "num_bits": 8, "strategy": "group", "group_size": 32,
                                "symmetric": True, "type": "int"}
    assert group["input_activations"]["strategy"] == "token" and group["input_activations"]["dynamic"] is True


def test_mixed_sparse_formats_store_one_format(tmp_path):
    """CSR and 2:4 layers in one model: all stored as sparse-bitmask; load picks each kernel again."""
    model = pruned_mlp("2:4").eval()
    with torch.no_grad():
        model[4].weight[torch.rand(model[4].weight.shape) < 0.9] = 0
    sparseinfer.sparsify(model, "2:4", filter=lambda name, m: name != "4")
    sparseinfer.sparsify(model, "csr", min_sparsity=0.85)
    x = torch.randn(3, 72)
    expected = model(x)
    sparseinfer.save(model, tmp_path)
    assert _config(tmp_path)["quantization_config"]["sparsity_config"]["format"] == "sparse-bitmask"
    loaded = sparseinfer.load(tmp_path, mlp())
    assert [type(m) for m in loaded[::2]] == [Sparse24Linear, Sparse24Linear, CSRLinear]
    assert torch.equal(loaded(x), expected)


def test_sparse_and_int8_layers_in_one_checkpoint(tmp_path):
    model = pruned_mlp("csr").eval()
    sparseinfer.sparsify(model, "csr", filter=lambda name, m: name == "0")
    sparseinfer.sparsify(model, "int8", act="none")
    x = torch.randn(4, 72)
    expected = model(x)
    sparseinfer.save(model, tmp_path)
    loaded = sparseinfer.load(tmp_path, mlp())
    assert [type(m) for m in loaded[::2]] == [CSRLinear, Int8Linear, Int8Linear]
    assert torch.equal(loaded(x), expected)


def test_dense_model_round_trip_and_no_quantization_config(tmp_path):
    model = mlp().eval()
    sparseinfer.save(model, tmp_path)
    assert _config(tmp_path) == {}
    loaded = sparseinfer.load(tmp_path, mlp())
    x = torch.randn(2, 72)
    assert torch.equal(loaded(x), model(x))


def test_load_into_a_model_already_holding_our_layers(tmp_path):
    """Loading replaces whatever layer the model has with what the checkpoint stores."""
    sparseinfer.save(compressed_mlp("csr"), tmp_path / "csr")
    dense = mlp().eval()
    sparseinfer.save(dense, tmp_path / "dense")
    target = compressed_mlp("int8")
    loaded = sparseinfer.load(tmp_path / "csr", target)
    assert [type(m) for m in loaded[::2]] == [CSRLinear] * 3
    loaded = sparseinfer.load(tmp_path / "dense", compressed_mlp("2:4"))
    assert [type(m) for m in loaded[::2]] == [nn.Linear] * 3
    x = torch.randn(2, 72)
    assert torch.equal(loaded(x), dense(x))


def test_low_sparsity_bitmask_loads_dense_with_a_warning(tmp_path):
    model = compressed_mlp("csr")
    x = torch.randn(2, 72)
    expected = model(x)
    sparseinfer.save(model, tmp_path)
    with pytest.warns(UserWarning, match=r"below min_sparsity=0.9 run dense \(no sparse kernel pays there\); 3 layers: 0, 2, 4"):
        loaded = sparseinfer.load(tmp_path, mlp(), min_sparsity=0.9)
    assert [type(m) for m in loaded[::2]] == [nn.Linear] * 3
    torch.testing.assert_close(loaded(x), expected)


def test_bitmask_of_a_2_4_weight_runs_on_the_2_4_kernel(tmp_path):
    """A 2:4-shaped weight written as sparse-bitmask (how llm-compressor often stores 2:4)."""
    model = pruned_mlp("2:4").eval()
    sparseinfer.sparsify(model, "csr", min_sparsity=0.45)
    x = torch.randn(2, 72)
    expected = model(x)
    sparseinfer.save(model, tmp_path)
    loaded = sparseinfer.load(tmp_path, mlp())
    assert [type(m) for m in loaded[::2]] == [Sparse24Linear] * 3  # 64x130 too: its tail group is short
    torch.testing.assert_close(loaded(x), expected)


@pytest.mark.parametrize("max_shard_size", [3000, "20KB", "0.02MB"])
def test_sharded_save_has_an_index_and_loads(tmp_path, max_shard_size):
    model = compressed_mlp("int8")
    files = sparseinfer.save(model, tmp_path, max_shard_size=max_shard_size)
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in os.listdir(tmp_path)
    with open(tmp_path / "model.safetensors.index.json") as f:
        index = json.load(f)
    assert set(index["weight_map"].values()) == set(shards)
    x = torch.randn(2, 72)
    assert torch.equal(sparseinfer.load(tmp_path, mlp())(x), model(x))
    # Saving again unsharded removes the old shards and the index.
    assert sparseinfer.save(model, tmp_path) == ["model.safetensors", "config.json"]
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_tied_tensors_are_stored_once_and_stay_tied(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.body = nn.Linear(16, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight
            self.register_buffer("position", torch.arange(4))
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

        def forward(self, ids):
            return self.head(self.body(self.embed(ids)) + self.position.sum())

    model = Tied().eval()
    sparseinfer.save(model, tmp_path)
    assert "head.weight" not in _keys(tmp_path) and "embed.weight" in _keys(tmp_path)
    fresh = Tied()
    loaded = sparseinfer.load(tmp_path, fresh)
    assert loaded.head.weight is loaded.embed.weight
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids), model(ids))


def test_load_fills_a_model_on_meta(tmp_path):
    model = compressed_mlp("csr")
    sparseinfer.save(model, tmp_path)
    with torch.device("meta"):
        skeleton = mlp()
    loaded = sparseinfer.load(tmp_path, skeleton)
    x = torch.randn(2, 72)
    assert torch.equal(loaded(x), model(x))
    assert all(t.device.type == "cpu" for t in loaded.parameters())


def test_load_casts_float_tensors_to_the_model_dtype(tmp_path):
    model = compressed_mlp("2:4")
    sparseinfer.save(model, tmp_path)
    loaded = sparseinfer.load(tmp_path, mlp(torch.bfloat16))
    assert {m.weight.dtype for m in loaded[::2]} == {torch.bfloat16}
    assert loaded[0].bias.dtype == torch.bfloat16
    loaded(torch.randn(2, 72, dtype=torch.bfloat16))


@pytest.mark.parametrize("group_size", [None, 32])
def test_4_bit_pack_quantized_runs_on_the_int4_kernels(tmp_path, group_size):
    """A 4-bit checkpoint (as llm-compressor writes W4A16) loads into Int4Linear, silently."""
    rows, cols = 24, 64
    q = torch.randint(-8, 8, (rows, cols), dtype=torch.int8)
    groups = 1 if group_size is None else cols // group_size
    scale = torch.rand(rows, groups) / 10 + 0.01
    bias = torch.randn(rows)
    save_file({"0.weight_packed": pack_int32(q, 4), "0.weight_scale": scale,
               "0.weight_shape": torch.tensor([rows, cols]), "0.bias": bias}, str(tmp_path / "model.safetensors"))
    strategy = {"strategy": "channel"} if group_size is None else {"strategy": "group", "group_size": group_size}
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True, **strategy}}}}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer = sparseinfer.load(tmp_path, nn.Sequential(nn.Linear(cols, rows)))[0]
    assert isinstance(layer, Int4Linear) and layer.act == "none" and layer.group_size == group_size
    dense = q.float() * (scale if group_size is None else scale.repeat_interleave(group_size, 1))
    x = torch.randn(3, cols)
    torch.testing.assert_close(layer(x), x @ dense.T + bias, rtol=1e-5, atol=1e-5)
    info = sparseinfer.inspect(tmp_path)
    assert info.layers[0].format == "pack-quantized int4"


def test_asymmetric_int8_is_dequantized_to_dense_with_a_warning(tmp_path):
    rows, cols = 16, 32
    q = torch.randint(-128, 128, (rows, cols), dtype=torch.int8)
    scale, zero = torch.rand(rows, 1) / 10, torch.randint(-3, 4, (rows, 1), dtype=torch.int8)
    save_file({"0.weight": q, "0.weight_scale": scale, "0.weight_zero_point": zero},
              str(tmp_path / "model.safetensors"))
    qc = {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"g": {
        "targets": ["Linear"], "weights": {"num_bits": 8, "strategy": "channel", "symmetric": False}}}}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    with pytest.warns(UserWarning, match=r"cannot run \(asymmetric\) are dequantized to dense"):
        layer = sparseinfer.load(tmp_path, nn.Sequential(nn.Linear(cols, rows, bias=False)))[0]
    assert type(layer) is nn.Linear
    torch.testing.assert_close(layer.weight, (q.float() - zero.float()) * scale)


@pytest.mark.parametrize("bits", [4, 8])
def test_int32_packing_round_trips(bits):
    low = -(1 << (bits - 1))
    for cols in (1, 7, 8, 33, 64):
        q = torch.randint(low, -low, (5, cols), dtype=torch.int8)
        assert torch.equal(unpack_int32(pack_int32(q, bits), bits, cols, "t"), q)


def test_inspect_reports_every_layer(tmp_path):
    model = pruned_mlp("csr", sparsity=0.9).eval()
    sparseinfer.sparsify(model, "csr", filter=lambda name, m: name == "0")
    sparseinfer.sparsify(model, "int8", filter=lambda name, m: name == "2")
    sparseinfer.save(model, tmp_path)
    info = sparseinfer.inspect(tmp_path)
    by_name = {layer.name: layer for layer in info.layers}
    assert [by_name[n].format for n in ("0", "2", "4")] == ["sparse-bitmask", "int-quantized int8", "dense"]
    assert by_name["0"].shape == (130, 72) and 0.85 < by_name["0"].sparsity < 0.95
    assert by_name["2"].dense_bytes == 64 * 130 * 4
    assert by_name["2"].stored_bytes == 64 * 130 + 64 * 4  # int8 values + per-channel fp32 scales
    assert by_name["4"].stored_bytes == by_name["4"].dense_bytes == 24 * 64 * 4
    assert info.other_bytes == (130 + 64) * 4  # biases
    file_bytes = sum(layer.stored_bytes for layer in info.layers) + info.other_bytes
    assert info.stored_bytes == file_bytes
    assert info.compression_ratio == pytest.approx(info.dense_bytes / info.stored_bytes)
    assert info.compression_ratio > 1.5
    text = str(info)
    assert "sparse-bitmask" in text and "compression ratio" in text


def test_cli_inspect(tmp_path, capsys):
    from sparseinfer.cli import main
    sparseinfer.save(compressed_mlp("2:4"), tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sparse-24-bitmask" in out and "130x72" in out and "compression ratio" in out
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["layers"]) == 3 and data["compression_ratio"] > 1
    assert main(["inspect", str(tmp_path / "absent")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_save_rejects_bad_arguments(tmp_path):
    model = compressed_mlp("int8")
    with pytest.raises(ValueError, match="quant_format must be one of"):
        sparseinfer.save(model, tmp_path, quant_format="float-quantized")
    with pytest.raises(ValueError, match="max_shard_size"):
        sparseinfer.save(model, tmp_path, max_shard_size="lots")
    with pytest.raises(ValueError, match="max_shard_size must be positive"):
        sparseinfer.save(model, tmp_path, max_shard_size=0)
    with torch.device("meta"):
        meta = mlp()
    with pytest.raises(ValueError, match="meta device"):
        sparseinfer.save(meta, tmp_path)
    with pytest.raises(TypeError, match="nn.Module"):
        sparseinfer.save({"a": torch.zeros(1)}, tmp_path)


def test_load_rejects_bad_arguments(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        sparseinfer.load(tmp_path / "absent", mlp())
    sparseinfer.save(mlp(), tmp_path)
    with pytest.raises(ValueError, match="min_sparsity"):
        sparseinfer.load(tmp_path, mlp(), min_sparsity=2)
    with pytest.raises(TypeError, match="nn.Module"):
        sparseinfer.load(tmp_path, "mlp")
    with pytest.raises(CheckpointError, match="config.json is not a Hugging Face model config"):
        sparseinfer.load(tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no config.json to build the model from"):
        sparseinfer.load(tmp_path)


def test_unexpected_tensors_warn_and_missing_ones_raise(tmp_path):
    sparseinfer.save(mlp(), tmp_path)
    bigger = nn.Sequential(*mlp(), nn.Linear(24, 3))
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) of the model are missing from the checkpoint: 5.weight, 5.bias"):
        sparseinfer.load(tmp_path, bigger)
    with pytest.warns(UserWarning, match=r"2 checkpoint tensor\(s\) match nothing in the model and were ignored: 2.bias, 2.weight"):
        sparseinfer.load(tmp_path, nn.Sequential(nn.Linear(72, 130), nn.ReLU(), nn.Identity(), nn.GELU(),
                                                 nn.Linear(64, 24, bias=False)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparseinfer.load(tmp_path, mlp())  # a clean load says nothing
