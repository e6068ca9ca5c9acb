"""Checkpoints of the 4-bit lookup formats: Int4Linear as compressed-tensors 4-bit pack-quantized
(symmetric or asymmetric, zero points packed along dim 0 as compressed-tensors 0.14 packs them),
CodebookLinear as sparseinfer's own versioned ``sparseinfer-codebook`` layout. Round trips are
exact; checkpoints compressed-tensors writes load into Int4Linear with its own dequantized
weights, and it decompresses ours to ours; malformed data and configs are CheckpointErrors."""
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

# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("act", ["dynamic", "none"])
@pytest.mark.parametrize("group_size", [32, 128, None])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_int4_round_trip(tmp_path, symmetric, group_size, act):
    model = _compressed("int4", act=act, group_size=group_size, symmetric=symmetric)
    sparseinfer.save(model, tmp_path)
    loaded = _quiet_load(tmp_path)
    _assert_same_model(loaded, model)
    assert {loaded[i].symmetric for i in (0, 2, 4)} == {symmetric}

    keys = _keys(tmp_path)
    rows, cols = 130, 72
    groups = 1 if model[0].group_size is None else -(-cols // model[0].group_size)
    assert keys["0.weight_packed"] == ("I32", (rows, cols // 8))
    assert keys["0.weight_scale"] == ("F32", (rows, groups))
    assert keys["0.weight_shape"] == ("I64", (2,))
    if symmetric:
        assert "0.weight_zero_point" not in keys
    else:  # packed along dim 0, as compressed-tensors does: ceil(130 / 8) words per group
        assert keys["0.weight_zero_point"] == ("I32", (17, groups))
        zero = unpack_int32_dim0(load_file(str(tmp_path / "model.safetensors"))["0.weight_zero_point"], 4, rows,
                                 groups, "z")
        assert torch.equal(zero, model[0].weight.zero_point())
    qc = _config(tmp_path)["quantization_config"]
    assert qc["format"] == "pack-quantized" and "sparseinfer_codebook" not in qc
    weights = [g["weights"] for g in qc["config_groups"].values()]
    assert {(w["num_bits"], w["type"], w["symmetric"]) for w in weights} == {(4, "int", symmetric)}
    acts = {json.dumps(g["input_activations"], sort_keys=True) for g in qc["config_groups"].values()}
    assert (acts == {"null"}) == (act == "none")
    # one config group per distinct grouping (group_size 128 is per channel on 72 and 64 columns)
    strategies = sorted((w["strategy"], w["group_size"]) for w in weights)
    assert strategies == {32: [("group", 32)], 128: [("channel", None), ("group", 128)],
                          None: [("channel", None)]}[group_size]


@pytest.mark.parametrize("act", ["dynamic", "none"])
@pytest.mark.parametrize("group_size", [None, 32, 64])
def test_codebook_round_trip(tmp_path, group_size, act):
    model = _compressed("codebook", act=act, group_size=group_size)
    sparseinfer.save(model, tmp_path)
    loaded = _quiet_load(tmp_path)
    _assert_same_model(loaded, model)
    keys = _keys(tmp_path)
    groups = 1 if group_size is None else -(-72 // group_size)
    assert keys["0.weight_packed"] == ("I32", (130, 9))
    assert keys["0.weight_codebook"] == ("F32", (130, groups, 16))
    assert not any(k.endswith(("weight_scale", "weight_zero_point")) for k in keys)
    qc = _config(tmp_path)["quantization_config"]
    assert qc["format"] == "sparseinfer-codebook"
    section = qc["sparseinfer_codebook"]
    assert (section["version"], section["index_bits"], section["entries"]) == (1, 4, 16)
    for gname, entry in section["config_groups"].items():
        group = qc["config_groups"][gname]
        assert group["format"] == "sparseinfer-codebook" and group["weights"] is None
    assert sorted(t for g in qc["config_groups"].values() for t in g["targets"]) == ["0", "2", "4"]


def test_bf16_int4_and_codebook_round_trip(tmp_path):
    torch.manual_seed(0)
    model = mlp(torch.bfloat16).eval()
    sparseinfer.sparsify(model, "int4", filter=lambda name, m: name == "0", symmetric=False, group_size=32)
    sparseinfer.sparsify(model, "codebook", filter=lambda name, m: name == "2", act="none")
    sparseinfer.save(model, tmp_path)
    assert _keys(tmp_path)["0.weight_scale"][0] == "BF16" and _keys(tmp_path)["2.weight_codebook"][0] == "BF16"
    loaded = _quiet_load(tmp_path, mlp(torch.bfloat16))
    x = X.to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_mixed_formats_in_one_checkpoint(tmp_path):
    """int8 (int-quantized), int4 (pack-quantized) and codebook groups side by side, plus a sparse
    layer: the top-level format is mixed-precision, each group names its own."""
    torch.manual_seed(0)
    model = nn.Sequential(*mlp(), nn.ReLU(), nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 16)).eval()
    with torch.no_grad():
        model[8].weight[torch.rand(model[8].weight.shape) < 0.8] = 0
    sparseinfer.sparsify(model, "int8", filter=lambda name, m: name == "0")
    sparseinfer.sparsify(model, "int4", filter=lambda name, m: name in ("2", "4"), group_size=32)
    model[4] = Int4Linear.from_linear(nn.Linear(64, 24, bias=False), act="none", group_size=None, symmetric=False)
    sparseinfer.sparsify(model, "codebook", filter=lambda name, m: name == "6", group_size=32)
    sparseinfer.sparsify(model, "csr", filter=lambda name, m: name == "8")
    sparseinfer.save(model, tmp_path)
    qc = _config(tmp_path)["quantization_config"]
    assert qc["format"] == "mixed-precision"
    by_target = {t: g for g in qc["config_groups"].values() for t in g["targets"]}
    assert {t: g["format"] for t, g in by_target.items()} == {
        "0": "int-quantized", "2": "pack-quantized", "4": "pack-quantized", "6": "sparseinfer-codebook"}
    assert by_target["0"]["weights"]["num_bits"] == 8 and by_target["2"]["weights"]["num_bits"] == 4
    assert by_target["4"]["weights"]["symmetric"] is False and by_target["2"]["weights"]["symmetric"] is True
    assert qc["sparsity_config"]["targets"] == ["8"]

    target = nn.Sequential(*mlp(), nn.ReLU(), nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 16))
    loaded = _quiet_load(tmp_path, target)
    assert [type(loaded[i]) for i in (0, 2, 4, 6, 8)] == [Int8Linear, Int4Linear, Int4Linear, CodebookLinear,
                                                          CSRLinear]
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))

    # int8 layers follow quant_format; int4 layers stay 4-bit pack-quantized
    sparseinfer.save(model, tmp_path / "packed", quant_format="pack-quantized")
    qc = _config(tmp_path / "packed")["quantization_config"]
    assert qc["format"] == "mixed-precision"  # pack-quantized and sparseinfer-codebook
    assert {g["format"] for g in qc["config_groups"].values() if g["weights"]} == {"pack-quantized"}
    with torch.no_grad():
        assert torch.equal(_quiet_load(tmp_path / "packed", target)(X), model(X))


def test_inspect_reports_int4_and_codebook_bits_per_weight(tmp_path):
    torch.manual_seed(0)
    model = mlp().eval()
    model[0] = Int4Linear.from_linear(model[0], group_size=None)
    model[2] = Int4Linear.from_linear(model[2], group_size=32, symmetric=False)
    model[4] = CodebookLinear.from_linear(model[4])
    sparseinfer.save(model, tmp_path)
    info = sparseinfer.inspect(tmp_path)
    by_name = {layer.name: layer for layer in info.layers}
    assert [by_name[n].format for n in ("0", "2", "4")] == [
        "pack-quantized int4", "pack-quantized int4 asym", "sparseinfer-codebook"]
    # per channel: 4 bits + one fp32 scale per row (+ the 16-byte shape)
    assert by_name["0"].stored_bytes == 130 * 72 // 2 + 130 * 4 + 16
    assert by_name["0"].bits_per_weight == pytest.approx(8 * (130 * 36 + 130 * 4 + 16) / (130 * 72))
    # group 32 over 130 columns: 5 groups of scales and of zero points (packed along dim 0)
    assert by_name["2"].stored_bytes == 64 * 17 * 4 + 64 * 5 * 4 + 8 * 5 * 4 + 16
    # per channel codebook: 4-bit indices + 16 fp32 values per row
    assert by_name["4"].stored_bytes == 24 * 8 * 4 + 24 * 16 * 4 + 16
    assert 4 < by_name["0"].bits_per_weight < 5 < by_name["2"].bits_per_weight < 32
    assert by_name["4"].sparsity == model[4].sparsity and by_name["2"].sparsity == model[2].sparsity
    assert info.to_dict()["layers"][0]["bits_per_weight"] == by_name["0"].bits_per_weight
    assert "bits/w" in str(info) and "sparseinfer-codebook" in str(info)


# ---------------------------------------------------------------------------------------------- foreign 4-bit files
def _write_4_bit(directory, rows, cols, *, group_size, zero=None, strategy=None, scale=None, extra=None,
                 weights=None):
    """A hand-written 4-bit pack-quantized checkpoint of one Linear(cols, rows, bias=False)."""
    g = torch.Generator().manual_seed(0)
    groups = 1 if group_size is None else -(-cols // group_size)
    q = torch.randint(-8, 8, (rows, cols), dtype=torch.int8, generator=g)
    scale = torch.rand(rows, groups, generator=g) / 10 + 0.01 if scale is None else scale
    tensors = {"0.weight_packed": pack_int32(q, 4), "0.weight_scale": scale,
               "0.weight_shape": torch.tensor([rows, cols])}
    if zero is not None:
        tensors["0.weight_zero_point"] = zero
    tensors.update(extra or {})
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    strategy = strategy or ({"strategy": "channel"} if group_size is None
                            else {"strategy": "group", "group_size": group_size})
    w = {"num_bits": 4, "type": "int", "symmetric": zero is None, **strategy, **(weights or {})}
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": w}}}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"quantization_config": qc}, f)
    return q, scale


def _one_linear(rows, cols):
    return nn.Sequential(nn.Linear(cols, rows, bias=False))


def test_per_tensor_and_odd_group_4_bit_weights(tmp_path):
    """Per-tensor scales run as per channel; a group size the kernels cannot run (not a multiple
    of 32) is dequantized to dense with a warning, to the same values."""
    rows, cols = 12, 64
    q, scale = _write_4_bit(tmp_path / "t", rows, cols, group_size=None, strategy={"strategy": "tensor"},
                            scale=torch.tensor([0.05]), zero=torch.tensor([3], dtype=torch.int8))
    layer = _quiet_load(tmp_path / "t", _one_linear(rows, cols))[0]
    assert isinstance(layer, Int4Linear) and not layer.symmetric
    assert torch.equal(layer.weight.to_dense(), (q.float() - 3) * 0.05)

    q, scale = _write_4_bit(tmp_path / "g16", rows, cols, group_size=16)
    with pytest.warns(UserWarning, match=r"4-bit weights that the int4 kernels cannot run \(group_size 16 is not "
                                         r"a multiple of 32\) are dequantized to dense"):
        layer = sparseinfer.load(tmp_path / "g16", _one_linear(rows, cols))[0]
    assert type(layer) is nn.Linear
    torch.testing.assert_close(layer.weight, q.float() * scale.repeat_interleave(16, 1), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- bad data
def _assert_rejected(directory, model, match):
    """load and inspect both refuse; inspect has no model, so a stated weight shape that does not
    match the model's is caught as the packed tensors not matching that shape."""
    with pytest.raises(CheckpointError, match=match):
        sparseinfer.load(directory, model)
    if "does not match" in match:
        match = r"tensor 0\.weight_(packed|shape): "
    with pytest.raises(CheckpointError, match=match):
        sparseinfer.inspect(directory)


ROWS, COLS = 20, 64
BAD_4_BIT = [
    ("scale shape", dict(group_size=32, scale=torch.rand(ROWS, 3)),
     r"tensor 0\.weight_scale: shape must be \(20, 2\)"),
    ("nan scale", dict(group_size=32, scale=torch.full((ROWS, 2), float("nan"))),
     r"tensor 0\.weight_scale: \[0, 0\] is nan; scales must be finite"),
    ("negative scale", dict(group_size=None, scale=-torch.ones(ROWS, 1)),
     r"tensor 0\.weight_scale: \[0, 0\] is -1\.0"),
    ("int scale", dict(group_size=None, scale=torch.ones(ROWS, 1, dtype=torch.int32)),
     r"tensor 0\.weight_scale: dtype must be one of"),
    ("zero point unpacked", dict(group_size=32, zero=torch.zeros(ROWS, 2, dtype=torch.int8)),
     r"tensor 0\.weight_zero_point: must be int32 of shape \(3, 2\) .*packed along dim 0"),
    ("zero point wrong groups", dict(group_size=32, zero=torch.zeros(3, 1, dtype=torch.int32)),
     r"tensor 0\.weight_zero_point: must be int32 of shape \(3, 2\)"),
    ("zero point missing", dict(group_size=32, weights={"symmetric": False}),
     r"tensor 0\.weight_zero_point is missing \(the config says the weights of 0 are asymmetric\)"),
    ("zero point out of range", dict(group_size=None, strategy={"strategy": "tensor"}, scale=torch.tensor([0.1]),
                                     zero=torch.tensor([9], dtype=torch.int8)),
     r"tensor 0\.weight_zero_point: values must lie in \[-8, 7\] for 4-bit weights"),
    ("zero point float", dict(group_size=None, strategy={"strategy": "tensor"}, scale=torch.tensor([0.1]),
                              zero=torch.tensor([1.0])),
     r"tensor 0\.weight_zero_point: must be an integer tensor"),
    ("packed width", dict(group_size=None, extra={"0.weight_packed": torch.zeros(ROWS, 9, dtype=torch.int32)}),
     r"tensor 0\.weight_packed: 9 int32 per row, but 64 columns of 4 bits need 8"),
    ("packed rows", dict(group_size=None, extra={"0.weight_packed": torch.zeros(0, 8, dtype=torch.int32)}),
     r"tensor 0\.weight_packed: weight shape \(0, 64\) does not match"),
    ("shape", dict(group_size=None, extra={"0.weight_shape": torch.tensor([ROWS, COLS + 1])}),
     r"tensor 0\.weight_shape: weight shape \(20, 65\) does not match"),
    ("codebook under pack-quantized", dict(group_size=None, extra={"0.weight_codebook": torch.zeros(ROWS, 1, 16)}),
     r"tensor 0\.weight_codebook is stored, but the config names 'pack-quantized'"),
]


@pytest.mark.parametrize("options, match", [c[1:] for c in BAD_4_BIT], ids=[c[0] for c in BAD_4_BIT])
def test_bad_4_bit_data_is_a_checkpoint_error(tmp_path, options, match):
    _write_4_bit(tmp_path, ROWS, COLS, **options)
    _assert_rejected(tmp_path, _one_linear(ROWS, COLS), match)


def test_packed_zero_point_rows_beyond_the_weight_are_ignored_like_compressed_tensors(tmp_path):
    """compressed-tensors pads the last int32 of each zero-point column; the padding's values do
    not matter (its unpack drops them), and neither do they for us."""
    zero = torch.randint(-8, 8, (ROWS, 2), dtype=torch.int8)
    packed = pack_int32_dim0(zero, 4)
    packed[-1] |= 0x70000000  # row 23 (padding) = 7 - 8
    q, scale = _write_4_bit(tmp_path, ROWS, COLS, group_size=32, zero=packed)
    layer = _quiet_load(tmp_path, _one_linear(ROWS, COLS))[0]
    assert torch.equal(layer.weight.zero_point(), zero)
    z = zero.float().repeat_interleave(32, 1)
    assert torch.equal(layer.weight.to_dense(), (q.float() - z) * scale.repeat_interleave(32, 1))


def _section(c):
    return c["quantization_config"]["sparseinfer_codebook"]


def _codebook_group(c):
    return next(g for g in c["quantization_config"]["config_groups"].values()
                if g["format"] == "sparseinfer-codebook")


def _codebook_group_name(c):
    return next(n for n, g in c["quantization_config"]["config_groups"].items()
                if g["format"] == "sparseinfer-codebook")


BAD_CODEBOOK_CONFIG = [
    ("section missing", lambda c: c["quantization_config"].pop("sparseinfer_codebook"),
     r"quantization_config\.sparseinfer_codebook is missing \(config_groups\.group_\d has format "
     r"'sparseinfer-codebook'"),
    ("newer version", lambda c: _section(c).update(version=2),
     r"sparseinfer_codebook\.version is 2; this sparseinfer reads codebook layout version 1 \(the checkpoint is "
     r"newer: upgrade sparseinfer\)"),
    ("version zero", lambda c: _section(c).update(version=0), r"sparseinfer_codebook\.version is 0"),
    ("version text", lambda c: _section(c).update(version="1"),
     r"sparseinfer_codebook\.version must be an integer, got '1'"),
    ("version bool", lambda c: _section(c).update(version=True),
     r"sparseinfer_codebook\.version must be an integer, got True"),
    ("version missing", lambda c: _section(c).pop("version"), r"sparseinfer_codebook\.version is missing"),
    ("index bits", lambda c: _section(c).update(index_bits=8),
     r"sparseinfer_codebook\.index_bits is 8; codebook layout version 1 has 4"),
    ("entries", lambda c: _section(c).update(entries=256),
     r"sparseinfer_codebook\.entries is 256; codebook layout version 1 has 16"),
    ("unknown key", lambda c: _section(c).update(scale_dtype="fp8"),
     r"sparseinfer_codebook\.scale_dtype is not a version-1 key"),
    ("section not an object", lambda c: c["quantization_config"].update(sparseinfer_codebook=[1]),
     r"quantization_config\.sparseinfer_codebook must be an object"),
    ("groups not an object", lambda c: _section(c).update(config_groups=["group_1"]),
     r"sparseinfer_codebook\.config_groups must be an object"),
    ("group entry missing", lambda c: _section(c).update(config_groups={}),
     r"config_groups\.group_\d has format 'sparseinfer-codebook', but quantization_config\.sparseinfer_codebook"
     r"\.config_groups has no entry"),
    ("entry names another group", lambda c: _section(c)["config_groups"].update(group_0={"group_size": None}),
     r"sparseinfer_codebook\.config_groups\.group_0 names no config group of format 'sparseinfer-codebook'"),
    ("entry names no group", lambda c: _section(c)["config_groups"].update(nope={"group_size": None}),
     r"sparseinfer_codebook\.config_groups\.nope names no config group"),
    ("group size missing", lambda c: _section(c)["config_groups"][_codebook_group_name(c)].pop("group_size"),
     r"config_groups\.group_\d\.group_size is missing \(null: one table per output channel\)"),
    ("group size 48", lambda c: _section(c)["config_groups"][_codebook_group_name(c)].update(group_size=48),
     r"group_size is 48; it must be null \(per channel\) or a positive multiple of 32"),
    ("group size 0", lambda c: _section(c)["config_groups"][_codebook_group_name(c)].update(group_size=0),
     r"group_size is 0"),
    ("group size text", lambda c: _section(c)["config_groups"][_codebook_group_name(c)].update(group_size="32"),
     r"group_size must be an integer, got '32'"),
    ("group size disagrees with the tables", lambda c: _section(c)["config_groups"][_codebook_group_name(c)]
     .update(group_size=64), r"tensor 0\.weight_codebook: shape must be \(130, 2, 16\)"),
    ("entry unknown key", lambda c: _section(c)["config_groups"][_codebook_group_name(c)].update(bits=3),
     r"group_\d\.bits is not a version-1 key"),
    ("weights on a codebook group", lambda c: _codebook_group(c).update(
        weights={"num_bits": 4, "type": "int", "strategy": "channel"}),
     r"config_groups\.group_\d\.weights must be null for format 'sparseinfer-codebook'"),
    ("codebook data under int4 scheme", lambda c: _codebook_group(c).update(
        format="pack-quantized", weights={"num_bits": 4, "type": "int", "strategy": "channel"}),
     r"sparseinfer_codebook\.config_groups\.group_\d names no config group of format"),
    ("codebook data under int4 scheme, no section", lambda c: (_codebook_group(c).update(
        format="pack-quantized", weights={"num_bits": 4, "type": "int", "strategy": "channel"}),
        c["quantization_config"].pop("sparseinfer_codebook")),
     r"tensor 0\.weight_codebook is stored, but the config names 'pack-quantized' for 0"),
    ("unknown format", lambda c: _codebook_group(c).update(format="sparseinfer-codebook-v2"),
     r"names an unknown format 'sparseinfer-codebook-v2'"),
    ("codebook as sparsity format", lambda c: c["quantization_config"]["sparsity_config"].update(
        format="sparseinfer-codebook"), r"sparsity_config\.format is 'sparseinfer-codebook', which sparseinfer "
                                        r"does not load here"),
]


@pytest.mark.parametrize("edit, match", [c[1:] for c in BAD_CODEBOOK_CONFIG], ids=[c[0] for c in BAD_CODEBOOK_CONFIG])
def test_bad_codebook_config_is_a_checkpoint_error(tmp_path, codebook_checkpoint, edit, match):
    directory = tmp_path / "ckpt"
    shutil.copytree(codebook_checkpoint, directory)
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    _assert_rejected(directory, mlp(), match)


BAD_CODEBOOK_TENSORS = [
    ("table groups", lambda t: t.update({"0.weight_codebook": t["0.weight_codebook"][:, :2].contiguous()}),
     r"tensor 0\.weight_codebook: shape must be \(130, 3, 16\)"),
    ("table entries", lambda t: t.update({"0.weight_codebook": t["0.weight_codebook"][..., :8].contiguous()}),
     r"tensor 0\.weight_codebook: shape must be \(130, 3, 16\)"),
    ("table nan", lambda t: t["0.weight_codebook"].view(-1)[7].fill_(float("nan")),
     r"tensor 0\.weight_codebook: values must be finite"),
    ("table inf", lambda t: t["0.weight_codebook"].view(-1)[0].fill_(float("inf")),
     r"tensor 0\.weight_codebook: values must be finite"),
    ("table int", lambda t: t.update({"0.weight_codebook": t["0.weight_codebook"].to(torch.int32)}),
     r"tensor 0\.weight_codebook: dtype must be one of"),
    ("table missing", lambda t: t.pop("0.weight_codebook"), r"tensor 0\.weight_codebook is missing"),
    ("indices width", lambda t: t.update({"0.weight_packed": t["0.weight_packed"][:, :8].contiguous()}),
     r"tensor 0\.weight_packed: 8 int32 per row, but 72 columns of 4 bits need 9"),
    ("indices dtype", lambda t: t.update({"0.weight_packed": t["0.weight_packed"].to(torch.int64)}),
     r"tensor 0\.weight_packed: must be a 2-D int32 tensor"),
    ("shape", lambda t: t.update({"0.weight_shape": torch.tensor([130, 80])}),
     r"tensor 0\.weight_shape: weight shape \(130, 80\) does not match"),
    ("shape missing", lambda t: t.pop("0.weight_shape"), r"tensor 0\.weight_shape is missing"),
    ("indices rows", lambda t: t.update({"0.weight_packed": t["0.weight_packed"][:0].contiguous()}),
     r"tensor 0\.weight_packed: weight shape \(0, 72\) does not match the model's layer \[out, in\] = \(130, 72\)"),
    ("extra scale", lambda t: t.update({"0.weight_scale": torch.ones(130, 1)}),
     r"tensor 0\.weight_scale is stored, but sparseinfer-codebook layers have none"),
    ("bias shape", lambda t: t.update({"0.bias": torch.ones(129)}), r"tensor 0\.bias: must be a float tensor of "
                                                                       r"shape \(130,\)"),
]


@pytest.mark.parametrize("edit, match", [c[1:] for c in BAD_CODEBOOK_TENSORS],
                         ids=[c[0] for c in BAD_CODEBOOK_TENSORS])
def test_bad_codebook_tensors_are_a_checkpoint_error(tmp_path, codebook_checkpoint, edit, match):
    directory = tmp_path / "ckpt"
    shutil.copytree(codebook_checkpoint, directory)
    path = str(directory / "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    _assert_rejected(directory, mlp(), match)


def test_codebook_config_without_tensors_of_it(tmp_path, codebook_checkpoint):
    """A layer the codebook group targets but stored as int8 (int-quantized) is refused."""
    directory = tmp_path / "ckpt"
    shutil.copytree(codebook_checkpoint, directory)
    path = str(directory / "model.safetensors")
    tensors = load_file(path)
    for key in ("0.weight_packed", "0.weight_codebook", "0.weight_shape"):
        tensors.pop(key)
    tensors["0.weight"] = torch.zeros(130, 72, dtype=torch.int8)
    save_file(tensors, path)
    _assert_rejected(directory, mlp(), r"layer 0: the config names 'sparseinfer-codebook', which stores "
                                       r"weight_packed, weight_codebook and weight_shape")



def test_4_bit_layers_wider_than_the_lookup_kernels_load_dense(tmp_path):
    """in_features above the lookup kernels' limit: int4 and codebook weights expand to dense,
    with a warning, to exactly their values."""
    from sparseinfer.formats.lut4 import MAX_COLS
    rows, cols = 2, MAX_COLS + 8
    q, scale = _write_4_bit(tmp_path / "int4", rows, cols, group_size=None)
    with pytest.warns(UserWarning, match=rf"int4 kernels cannot run \(in_features {cols} > {MAX_COLS}\)"):
        layer = sparseinfer.load(tmp_path / "int4", _one_linear(rows, cols))[0]
    assert type(layer) is nn.Linear and torch.equal(layer.weight, q.float() * scale)

    directory = tmp_path / "codebook"
    os.makedirs(directory)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 16, (rows, cols), dtype=torch.int8, generator=g)
    table = torch.randn(rows, 1, 16, generator=g)
    save_file({"0.weight_packed": pack_int32(idx - 8, 4), "0.weight_codebook": table,
               "0.weight_shape": torch.tensor([rows, cols])}, str(directory / "model.safetensors"))
    qc = {"quant_method": "compressed-tensors", "format": "sparseinfer-codebook",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": None}},
          "sparseinfer_codebook": {"version": 1, "index_bits": 4, "entries": 16,
                                   "config_groups": {"group_0": {"group_size": None}}}}
    (directory / "config.json").write_text(json.dumps({"quantization_config": qc}))
    with pytest.warns(UserWarning, match=r"codebook weights that the lookup kernels cannot run"):
        layer = sparseinfer.load(directory, _one_linear(rows, cols))[0]
    assert type(layer) is nn.Linear
    assert torch.equal(layer.weight, torch.gather(table[:, 0], 1, idx.long()))
