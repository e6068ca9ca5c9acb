"""Checkpoints of sparse layers with int8 values (csr+int8, 2:4+int8): the compressed-tensors 0.14
composite (sparse layout holding the int8 values + weight_scale + an int-quantized config group),
now sparseinfer's own format with its ``sparseinfer_sparse`` version section. Round trips, the
layout written, mixed models, the version section, and hostile files (a CheckpointError naming
the tensor or config key from load and inspect alike, never a crash). compressed-tensors itself:
test_checkpoint_sparse_int8_compat.py."""
import json
import os
import shutil
import warnings

import pytest
import torch

import sparseinfer
from sparseinfer import Int8Linear, Sparse24Linear
from sparseinfer.checkpoint import CheckpointError
from sparseinfer.nn import CsrInt8Linear, Sparse24Int8Linear
from checkpoint_models import edit_tensors as _edit_tensors, mlp, pruned_mlp, read_config as _config, stored_keys as _keys

LAYER = {"csr+int8": CsrInt8Linear, "2:4+int8": Sparse24Int8Linear}
PRUNING = {"csr+int8": "csr", "2:4+int8": "2:4"}
OPTIONS = [{"act": "dynamic"}, {"act": "none", "group_size": 32}]
X = torch.randn(5, 72, generator=torch.Generator().manual_seed(3))


def _model(fmt, dtype=torch.float32, **options):
    torch.manual_seed(0)
    model = pruned_mlp(PRUNING[fmt], dtype).eval()
    assert len(sparseinfer.sparsify(model, fmt, **options).converted) == 3
    return model


def _quiet_load(directory, dtype=torch.float32):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dequantizes or falls back
        return sparseinfer.load(directory, mlp(dtype))


def _assert_same_layer(loaded, layer):
    assert type(loaded) is type(layer) and (loaded.act, loaded.group_size) == (layer.act, layer.group_size)
    assert torch.equal(loaded.weight.qweight(), layer.weight.qweight())
    assert torch.equal(loaded.weight.scale(), layer.weight.scale())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("fmt", ["csr+int8", "2:4+int8"])
def test_round_trip_is_exact(tmp_path, fmt, options, dtype):
    model = _model(fmt, dtype, **options)
    sparseinfer.save(model, tmp_path)
    loaded = _quiet_load(tmp_path, dtype)
    for i in (0, 2, 4):
        _assert_same_layer(loaded[i], model[i])
        assert loaded[i].weight.dtype == dtype
    with torch.no_grad():
        assert torch.equal(loaded(X.to(dtype)), model(X.to(dtype)))


@pytest.mark.parametrize("fmt", ["csr+int8", "2:4+int8"])
def test_layout_written(tmp_path, fmt):
    """The compressed-tensors 0.14 composite: its sparse layout with int8 values, weight_scale
    beside them, an int-quantized group on the same layers, and our version section."""
    model = _model(fmt, act="none", group_size=32)
    sparseinfer.save(model, tmp_path, quant_format="pack-quantized")  # int8 values in a sparse layout: int-quantized
    keys = {k: v for k, v in _keys(tmp_path).items() if k.startswith("0.")}
    sparse = {"0.shape": ("I64", (2,)), "0.compressed": ("I8", (model[0].weight.nnz,)), "0.bitmask": ("U8", (130, 9)),
              "0.row_offsets": ("I64", (130,))} if fmt == "csr+int8" else \
        {"0.shape": ("I64", (2, 1)), "0.compressed": ("I8", (130, 36)), "0.bitmask": ("U8", (130, 9))}
    assert keys == {**sparse, "0.weight_scale": ("F32", (130, 3)), "0.bias": ("F32", (130,))}
    qc = _config(tmp_path)["quantization_config"]
    assert qc["sparseinfer_sparse"] == {"version": 1}
    assert qc["sparsity_config"]["format"] == ("sparse-bitmask" if fmt == "csr+int8" else "sparse-24-bitmask")
    assert qc["sparsity_config"]["targets"] == ["0", "2", "4"]
    assert qc["format"] == "int-quantized"
    (group,) = qc["config_groups"].values()
    assert group["targets"] == ["0", "2", "4"] and group["format"] == "int-quantized"
    assert group["input_activations"] is None
    assert {k: group["weights"][k] for k in ("num_bits", "type", "symmetric", "strategy", "group_size")} == {
        "num_bits": 8, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}
    rows = {row.name: row for row in sparseinfer.inspect(tmp_path).layers}
    sparsity_format = qc["sparsity_config"]["format"]
    for i in ("0", "2", "4"):
        row, layer = rows[i], model[int(i)]
        assert row.format == f"{sparsity_format} int8" and row.sparsity == pytest.approx(layer.sparsity)
        stored = sum(_nbytes(dtype, shape) for k, (dtype, shape) in _keys(tmp_path).items()
                     if k.startswith(f"{i}.") and not k.endswith(".bias"))
        assert row.stored_bytes == stored
        assert row.bits_per_weight == pytest.approx(8 * stored / (layer.weight.rows * layer.weight.cols))


def _nbytes(dtype, shape):
    return {"I64": 8, "I8": 1, "U8": 1, "F32": 4}[dtype] * int(torch.tensor(shape).prod())


def test_activation_schemes_written(tmp_path):
    sparseinfer.save(_model("2:4+int8", act="dynamic"), tmp_path)
    (group,) = _config(tmp_path)["quantization_config"]["config_groups"].values()
    assert {k: group["input_activations"][k] for k in ("num_bits", "type", "symmetric", "dynamic", "strategy")} == {
        "num_bits": 8, "type": "int", "symmetric": True, "dynamic": True, "strategy": "token"}
    assert group["weights"]["strategy"] == "channel" and group["weights"]["group_size"] is None


def test_mixed_sparsity_formats_share_the_general_layout(tmp_path):
    """csr+int8, 2:4+int8 and float 2:4 in one model: one sparsity layout per checkpoint, so all
    go sparse-bitmask; the 2:4+int8 layer keeps its int8 values and scales (it loads as
    csr+int8), the float 2:4 one loads back as 2:4."""
    torch.manual_seed(0)
    model = pruned_mlp("2:4").eval()
    sparseinfer.sparsify(model, "csr+int8", filter=lambda name, m: name == "0", group_size=32)
    sparseinfer.sparsify(model, "2:4+int8", filter=lambda name, m: name == "2", act="none")
    sparseinfer.sparsify(model, "2:4", filter=lambda name, m: name == "4")
    sparseinfer.save(model, tmp_path)
    qc = _config(tmp_path)["quantization_config"]
    assert qc["sparsity_config"]["format"] == "sparse-bitmask"
    assert sorted(g["targets"] for g in qc["config_groups"].values()) == [["0"], ["2"]]
    loaded = _quiet_load(tmp_path)
    assert [type(m) for m in loaded[::2]] == [CsrInt8Linear, CsrInt8Linear, Sparse24Linear]
    _assert_same_layer(loaded[0], model[0])
    assert (loaded[2].act, loaded[2].group_size) == ("none", None)
    assert torch.equal(loaded[2].weight.qweight(), model[2].weight.qweight())
    assert torch.equal(loaded[2].weight.scale(), model[2].weight.scale())
    with torch.no_grad():  # weight-only layer 2 now runs the csr kernel: another float summation order
        torch.testing.assert_close(loaded(X), model(X), rtol=1e-5, atol=1e-6)


def test_sparse_int8_beside_pack_quantized_int8(tmp_path):
    """quant_format applies to the dense int8 layers only: the groups differ in format."""
    torch.manual_seed(0)
    model = pruned_mlp("csr").eval()
    sparseinfer.sparsify(model, "csr+int8", filter=lambda name, m: name in ("0", "4"))
    sparseinfer.sparsify(model, "int8", filter=lambda name, m: name == "2")
    sparseinfer.save(model, tmp_path, quant_format="pack-quantized")
    qc = _config(tmp_path)["quantization_config"]
    assert qc["format"] == "mixed-precision"
    assert {g["format"]: g["targets"] for g in qc["config_groups"].values()} == {
        "int-quantized": ["0", "4"], "pack-quantized": ["2"]}
    assert {k for k in _keys(tmp_path) if k.startswith("2.")} == {"2.bias", "2.weight_packed", "2.weight_shape",
                                                                  "2.weight_scale"}
    loaded = _quiet_load(tmp_path)
    assert [type(m) for m in loaded[::2]] == [CsrInt8Linear, Int8Linear, CsrInt8Linear]
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


# ------------------------------------------------------------------------------ hostile files
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse_int8")
    for fmt in LAYER:
        sparseinfer.save(_model(fmt), root / fmt)
    return root


def _copy(checkpoints, fmt, tmp_path):
    return shutil.copytree(checkpoints / fmt, tmp_path / "c")


def _edit_config(directory, edit):
    config = _config(directory)
    edit(config["quantization_config"])
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def _both_refuse(directory, pattern):
    for call in (lambda: sparseinfer.load(directory, mlp()), lambda: sparseinfer.inspect(directory)):
        with pytest.raises(CheckpointError, match=pattern):
            call()


def _set_bit(t, key, row, col):
    bitmask = t[key].clone()
    bitmask[row, col // 8] |= 1 << (col % 8)
    t[key] = bitmask


def _first_clear_bit(bitmask, row):
    bits = [(int(bitmask[row, c // 8]) >> (c % 8)) & 1 for c in range(72)]
    return bits.index(0)


def _scale_value(t, value):
    scale = t["0.weight_scale"].clone()
    scale[3, 0] = value
    t["0.weight_scale"] = scale


BAD_TENSORS = [
    ("csr+int8", "truncated compressed", lambda t: t.update({"0.compressed": t["0.compressed"][:-3]}),
     r"tensor 0\.compressed: length must equal the \d+ bits set in bitmask, got \d+"),
    ("csr+int8", "compressed int16", lambda t: t.update({"0.compressed": t["0.compressed"].to(torch.int16)}),
     r"tensor 0\.compressed: must be 1-D with dtype in"),
    ("csr+int8", "compressed 2-D", lambda t: t.update({"0.compressed": t["0.compressed"][:-1].reshape(2, -1)}),
     r"tensor 0\.compressed: must be 1-D in sparse-bitmask, got int8 of shape \(2, 927\)"),
    ("csr+int8", "bitmask popcount mismatch",
     lambda t: _set_bit(t, "0.bitmask", 5, _first_clear_bit(t["0.bitmask"], 5)),
     r"tensor 0\.compressed: length must equal the \d+ bits set in bitmask"),
    ("csr+int8", "bitmask int8", lambda t: t.update({"0.bitmask": t["0.bitmask"].view(torch.int8)}),
     r"tensor 0\.bitmask: must be uint8"),
    ("csr+int8", "row offsets", lambda t: t["0.row_offsets"].__setitem__(4, 1),
     r"tensor 0\.row_offsets: row_offsets\[4\]"),
    ("csr+int8", "shape", lambda t: t.update({"0.shape": torch.tensor([130, 64])}),
     r"tensor 0\.shape: weight shape \(130, 64\) does not match|tensor 0\.bitmask: must be uint8 of shape \(130, 8\)"),
    ("csr+int8", "scale missing", lambda t: t.pop("0.weight_scale"), r"tensor 0\.weight_scale is missing"),
    ("csr+int8", "scale int", lambda t: t.update({"0.weight_scale": t["0.weight_scale"].to(torch.int32)}),
     r"tensor 0\.weight_scale: dtype must be one of"),
    ("csr+int8", "scale shape", lambda t: t.update({"0.weight_scale": t["0.weight_scale"].repeat(1, 2)}),
     r"tensor 0\.weight_scale: shape must be \(130, 1\) for a 130x72 weight with group_size=None, got \(130, 2\)"),
    ("csr+int8", "scale nan", lambda t: _scale_value(t, float("nan")), r"tensor 0\.weight_scale: \[3, 0\] is nan"),
    ("2:4+int8", "scale negative", lambda t: _scale_value(t, -1.0), r"tensor 0\.weight_scale: \[3, 0\] is -1\.0"),
    ("2:4+int8", "scale inf", lambda t: _scale_value(t, float("inf")), r"tensor 0\.weight_scale: \[3, 0\] is inf"),
    ("2:4+int8", "3 non-zeros in a group of 4", lambda t: _set_bit(t, "0.bitmask", 7, next(
        c for c in range(4) if not (int(t["0.bitmask"][7, 0]) >> c) & 1)),
     r"tensor 0\.bitmask: .*have 3 bits set; 2:4 needs exactly 2"),
    ("2:4+int8", "compressed columns", lambda t: t.update({"0.compressed": t["0.compressed"][:, :-2].contiguous()}),
     r"tensor 0\.compressed: shape must be \(130, 36\)"),
    ("2:4+int8", "compressed 1-D", lambda t: t.update({"0.compressed": t["0.compressed"].flatten()}),
     r"tensor 0\.compressed: must be 2-D in sparse-24-bitmask, got int8 of shape \(4680,\)"),
    ("2:4+int8", "compressed uint8", lambda t: t.update({"0.compressed": t["0.compressed"].view(torch.uint8)}),
     r"tensor 0\.compressed: dtype must be one of"),
    ("2:4+int8", "zero point", lambda t: t.update({"0.weight_zero_point": torch.ones(130, 1, dtype=torch.int8)}),
     r"tensor 0\.weight_zero_point: must be all zero"),
    ("2:4+int8", "zero point float", lambda t: t.update({"0.weight_zero_point": torch.zeros(130, 1)}),
     r"tensor 0\.weight_zero_point: must be an integer tensor"),
    ("2:4+int8", "g_idx", lambda t: t.update({"0.weight_g_idx": torch.zeros(72, dtype=torch.int32)}),
     r"tensor 0\.weight_g_idx: activation-order"),
    ("2:4+int8", "bias", lambda t: t.update({"0.bias": t["0.bias"][:-1].clone()}), r"tensor 0\.bias: must be a float"),
]


@pytest.mark.parametrize("fmt, what, edit, pattern", BAD_TENSORS, ids=[f"{c[0]}-{c[1]}" for c in BAD_TENSORS])
def test_bad_tensors_are_refused(tmp_path, checkpoints, fmt, what, edit, pattern):
    directory = _copy(checkpoints, fmt, tmp_path)
    _edit_tensors(directory, edit)
    _both_refuse(directory, pattern)


def _group(qc):
    return next(iter(qc["config_groups"].values()))


BAD_CONFIG = [
    ("no config group", lambda qc: [qc.pop(k) for k in ("config_groups", "format")],
     r"tensor 0\.compressed holds int8 values, but no config_groups entry .* targets layer 0"),
    ("layer ignored", lambda qc: qc.update(ignore=["0"]), r"no config_groups entry .* targets layer 0"),
    ("pack-quantized", lambda qc: _group(qc).update(format="pack-quantized"),
     r"tensor 0\.compressed holds int8 values, but the config names 'pack-quantized' for 0"),
    ("asymmetric", lambda qc: _group(qc)["weights"].update(symmetric=False),
     r"layer 0: asymmetric int8 weights in a sparse layout are not supported"),
    ("4 bits", lambda qc: _group(qc)["weights"].update(num_bits=4),
     r"config_groups\.group_0\.weights\.num_bits is 4; int-quantized loads with 8 bits"),
    ("group size vs scales", lambda qc: _group(qc)["weights"].update(strategy="group", group_size=32),
     r"tensor 0\.weight_scale: shape must be \(130, 3\)"),
    ("per tensor vs scales", lambda qc: _group(qc)["weights"].update(strategy="tensor"),
     r"tensor 0\.weight_scale: per-tensor scale must hold one value"),
    ("no sparsity config", lambda qc: qc.update(sparsity_config={}), r"sparsity_config\.format is None"),
    ("newer version", lambda qc: qc.update(sparseinfer_sparse={"version": 2}),
     r"quantization_config\.sparseinfer_sparse\.version is 2; this sparseinfer reads sparse checkpoint format "
     r"version 1 \(the checkpoint is newer: upgrade sparseinfer\)"),
    ("version zero", lambda qc: qc.update(sparseinfer_sparse={"version": 0}), r"sparseinfer_sparse\.version is 0"),
    ("version text", lambda qc: qc.update(sparseinfer_sparse={"version": "1"}),
     r"sparseinfer_sparse\.version must be an integer, got '1'"),
    ("version missing", lambda qc: qc.update(sparseinfer_sparse={}), r"sparseinfer_sparse\.version is missing"),
    ("unknown key", lambda qc: qc.update(sparseinfer_sparse={"version": 1, "values": "int4"}),
     r"sparseinfer_sparse\.values is not a version-1 key"),
    ("section not an object", lambda qc: qc.update(sparseinfer_sparse=[1]),
     r"quantization_config\.sparseinfer_sparse must be an object"),
]


@pytest.mark.parametrize("what, edit, pattern", BAD_CONFIG, ids=[c[0] for c in BAD_CONFIG])
def test_bad_config_is_refused(tmp_path, checkpoints, what, edit, pattern):
    directory = _copy(checkpoints, "csr+int8", tmp_path)
    _edit_config(directory, edit)
    _both_refuse(directory, pattern)


def test_files_without_the_version_section_load_as_version_1(tmp_path, checkpoints):
    """llm-compressor wrote no section: its composites read as version 1."""
    directory = _copy(checkpoints, "2:4+int8", tmp_path)
    _edit_config(directory, lambda qc: qc.pop("sparseinfer_sparse"))
    loaded = _quiet_load(directory)
    assert [type(m) for m in loaded[::2]] == [Sparse24Int8Linear] * 3

