"""Untrusted checkpoints: every malformed file, tensor or config value gives a CheckpointError
naming it, never a crash; a fuzz test mutates the bytes of real checkpoints."""
import json
import os
import random
import shutil
import struct
import warnings

import pytest
import torch

import sparseinfer
from sparseinfer.checkpoint import CheckpointError
from checkpoint_models import compressed_mlp, edit_tensors as _edit_tensors, mlp


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One real checkpoint directory per stored format."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    made = {}
    for name, fmt, options, save_options in [
            ("csr", "csr", {}, {}), ("2:4", "2:4", {}, {}), ("int8", "int8", {}, {}),
            ("int8-group-weight-only", "int8", {"act": "none", "group_size": 32}, {}),
            ("pack8", "int8", {}, {"quant_format": "pack-quantized"}),
            ("int4-asym", "int4", {"group_size": 32, "symmetric": False}, {}),
            ("codebook", "codebook", {"group_size": 32}, {}),
            ("sharded-csr", "csr", {}, {"max_shard_size": 8000})]:
        directory = root / name
        sparseinfer.save(compressed_mlp(fmt, **options), directory, **save_options)
        made[name] = directory
    return made


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(directory, edit):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    edit(config)
    with open(path, "w") as f:
        json.dump(config, f)


def _load(directory):
    return sparseinfer.load(directory, mlp())


def _set(tensors, key, value):
    tensors[key] = value


TENSOR_CASES = [
    # (checkpoint, edit, expected message)
    ("csr", lambda t: t.pop("2.bitmask"), r"tensor 2\.bitmask is missing"),
    ("csr", lambda t: t.pop("4.shape"), r"tensor 4\.shape is missing"),
    ("csr", lambda t: t.pop("0.bias"), r"tensor 0\.bias is missing"),
    ("csr", lambda t: _set(t, "0.shape", torch.tensor([130, 73])), r"tensor 0\.shape: weight shape \(130, 73\) does not match"),
    ("csr", lambda t: _set(t, "0.shape", torch.tensor([-1, 2**40])), r"tensor 0\.shape: weight shape"),
    ("csr", lambda t: _set(t, "0.shape", torch.tensor([1.5, 2.0])), r"tensor 0\.shape: must hold two integers"),
    ("csr", lambda t: _set(t, "0.compressed", t["0.compressed"][:-1].clone()), r"tensor 0\.compressed: .*length must equal"),
    ("csr", lambda t: _set(t, "0.compressed", t["0.compressed"].to(torch.int32)), r"tensor 0\.compressed: "),
    ("csr", lambda t: t["2.bitmask"].__setitem__((0, 0), t["2.bitmask"][0, 0] ^ 1), r"tensor 2\.compressed: .*length"),
    ("csr", lambda t: t["0.bitmask"].__setitem__((0, -1), 0xFF), r"tensor 0\.bitmask: .*beyond column 71|tensor 0\.compressed"),
    ("csr", lambda t: t["0.row_offsets"].__setitem__(5, 10**9), r"tensor 0\.row_offsets: row_offsets\[5\]"),
    ("csr", lambda t: _set(t, "0.row_offsets", t["0.row_offsets"][:-1].clone()), r"tensor 0\.row_offsets: must be"),
    ("csr", lambda t: _set(t, "0.bias", torch.zeros(129)), r"tensor 0\.bias: must be a float tensor of shape \(130,\)"),
    ("csr", lambda t: _set(t, "4.bias", torch.zeros(24)), r"tensor 4\.bias is stored, but the model's layer has no bias"),
    ("2:4", lambda t: _set(t, "2.compressed", t["2.compressed"][:, :-1].clone()), r"tensor 2\.compressed: .*shape must be"),
    ("2:4", lambda t: t["0.bitmask"].__setitem__((3, 0), 0xFF), r"tensor 0\.bitmask: .*2:4 needs exactly 2"),
    ("int8", lambda t: _set(t, "0.weight", t["0.weight"][:, :-1].clone()), r"tensor 0\.weight: weight shape \(130, 71\) does not match"),
    ("int8", lambda t: t["2.weight_scale"].__setitem__((7, 0), float("nan")), r"tensor 2\.weight_scale: \[7, 0\] is nan"),
    ("int8", lambda t: t["2.weight_scale"].__setitem__((1, 0), -1.0), r"tensor 2\.weight_scale: \[1, 0\] is -1.0"),
    ("int8", lambda t: _set(t, "2.weight_scale", torch.ones(64, 3)), r"tensor 2\.weight_scale: shape must be \(64, 1\)"),
    ("int8", lambda t: _set(t, "2.weight_scale", torch.ones(64, 1, dtype=torch.int32)), r"tensor 2\.weight_scale: dtype"),
    ("int8", lambda t: t.pop("4.weight_scale"), r"tensor 4\.weight_scale is missing"),
    ("int8", lambda t: _set(t, "0.weight_g_idx", torch.zeros(72, dtype=torch.int32)), r"tensor 0\.weight_g_idx: activation-order"),
    ("int8-group-weight-only", lambda t: _set(t, "2.weight_scale", torch.ones(64, 4)), r"tensor 2\.weight_scale: shape must be \(64, 5\)"),
    ("pack8", lambda t: _set(t, "0.weight_packed", t["0.weight_packed"][:, :-1].clone()), r"tensor 0\.weight_packed: 17 int32 per row, but 72 columns of 8 bits need 18"),
    ("pack8", lambda t: _set(t, "0.weight_packed", t["0.weight_packed"].to(torch.int64)), r"tensor 0\.weight_packed: must be a 2-D int32"),
    ("pack8", lambda t: _set(t, "0.weight_shape", torch.tensor([130, 80])), r"tensor 0\.weight_shape: weight shape \(130, 80\)"),
    ("pack8", lambda t: t.pop("0.weight_shape"), r"tensor 0\.weight_shape is missing"),
]


CONFIG_CASES = [
    ("csr", lambda c: c["quantization_config"]["sparsity_config"].update(format="sparse-magic"),
     r"sparsity_config\.format names an unknown format 'sparse-magic'"),
    ("csr", lambda c: c["quantization_config"]["sparsity_config"].update(format="marlin-24"),
     r"sparsity_config\.format is 'marlin-24', which sparseinfer does not load here"),
    ("csr", lambda c: c["quantization_config"].update(sparsity_config={}),
     r"tensor 0\.compressed is stored, but .*sparsity_config\.format is None"),
    ("csr", lambda c: c["quantization_config"].update(quant_method="gptq"), r"quant_method is 'gptq'"),
    ("csr", lambda c: c.update(quantization_config=[1, 2]), r"quantization_config must be an object"),
    ("csr", lambda c: c["quantization_config"]["sparsity_config"].update(targets=["re:("]), r"bad regex"),
    ("int8", lambda c: c["quantization_config"].update(config_groups={}),
     r"tensor 0\.weight is quantized, but no config_groups entry .* targets layer 0"),
    ("int8", lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(type="float"),
     r"weights\.type is 'float'"),
    ("int8", lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(num_bits=4),
     r"weights\.num_bits is 4; int-quantized loads with 8 bits"),
    ("int8", lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(num_bits="8"),
     r"weights\.num_bits must be an integer, got '8'"),
    ("int8", lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(strategy="block"),
     r"weights\.strategy is 'block'"),
    ("int8", lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(strategy="group", group_size=-3),
     r"weights\.group_size must be a positive int"),
    ("int8", lambda c: c["quantization_config"]["config_groups"]["group_0"].update(format="nvfp4-pack-quantized"),
     r"group_0\.format is 'nvfp4-pack-quantized', which sparseinfer does not load here"),
    ("int8", lambda c: c["quantization_config"]["config_groups"].update(group_0=7), r"config_groups\.group_0 must be an object"),
    ("pack8", lambda c: c["quantization_config"]["config_groups"]["group_0"].update(format="int-quantized"),
     r"tensor 0\.weight_packed is pack-quantized, but the config names 'int-quantized'"),
    ("pack8", lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(num_bits=2),
     r"weights\.num_bits is 2; pack-quantized loads with 4 or 8 bits"),
]


EDIT_CASES = ([(_edit_tensors, *case) for case in TENSOR_CASES] + [(_edit_config, *case) for case in CONFIG_CASES])


@pytest.mark.parametrize("editor, source, edit, message", EDIT_CASES,
                         ids=[f"{c[0].__name__[6:]}-{c[1]}-{i}" for i, c in enumerate(EDIT_CASES)])
def test_bad_tensor_or_config_is_named(tmp_path, checkpoints, editor, source, edit, message):
    directory = _copy(checkpoints[source], tmp_path / "c")
    editor(directory, edit)
    with pytest.raises(CheckpointError, match=message):
        _load(directory)


def test_bad_files_are_named(tmp_path, checkpoints):
    directory = _copy(checkpoints["csr"], tmp_path / "c")
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        _load(directory)
    path.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        _load(directory)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        _load(directory)
    os.remove(path)
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or model\.safetensors\.index\.json"):
        _load(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: cannot be read as JSON"):
        _load(directory)
    (directory / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match=r"config\.json: must hold a JSON object"):
        _load(directory)


def test_bad_index_is_named(tmp_path, checkpoints):
    directory = _copy(checkpoints["sharded-csr"], tmp_path / "c")
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    for weight_map, message in [
            ({**index["weight_map"], "0.bias": "../model.safetensors"}, r"'\.\./model\.safetensors' is not a \.safetensors file in the directory"),
            ({**index["weight_map"], "ghost": shard}, rf"tensor ghost is mapped to {shard}, which lacks it"),
            ({**index["weight_map"], "0.bias": "absent.safetensors"}, r"absent\.safetensors: not a valid safetensors file"),
            ([1, 2], r"'weight_map' must map tensor names to file names")]:
        index_path.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(CheckpointError, match=message):
            _load(directory)
    index_path.write_text(json.dumps({"weight_map": {k: v for k, v in index["weight_map"].items() if k != "2.bitmask"}}))
    with pytest.raises(CheckpointError, match=r"tensor 2\.bitmask is missing"):
        _load(directory)


def test_dense_tensor_mismatches_are_named(tmp_path):
    sparseinfer.save(mlp(), tmp_path)
    _edit_tensors(tmp_path, lambda t: _set(t, "2.weight", torch.zeros(64, 131)))
    with pytest.raises(CheckpointError, match=r"tensor 2\.weight: shape \(64, 131\) does not match the model's \(64, 130\)"):
        _load(tmp_path)
    _edit_tensors(tmp_path, lambda t: _set(t, "2.weight", torch.zeros(64, 130, dtype=torch.int16)))
    with pytest.raises(CheckpointError, match=r"tensor 2\.weight: dtype torch\.int16 cannot fill the model's torch\.float32"):
        _load(tmp_path)


# --- fuzzing: mutate the bytes of real checkpoints; only CheckpointError (or success) may come out

FUZZ_CASES = int(os.environ.get("SPARSEINFER_FUZZ_CASES", "1200"))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    header_end = 8 + int.from_bytes(data[:8], "little") if len(data) >= 8 else len(data)
    kind = rng.random()
    if kind < 0.15:  # truncate
        return bytes(data[: rng.randrange(len(data))])
    if kind < 0.55:  # flip bytes inside the JSON header (shapes, dtypes, offsets, names)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(header_end, len(data)))] = rng.randrange(256)
        return bytes(data)
    if kind < 0.65:  # rewrite a digit of the header (plausible but wrong shapes / offsets)
        digits = [i for i in range(8, min(header_end, len(data))) if chr(data[i]).isdigit()]
        if digits:
            data[rng.choice(digits)] = ord(str(rng.randrange(10)))
        return bytes(data)
    for _ in range(rng.randint(1, 16)):  # corrupt tensor data (bitmasks, offsets, scales, shapes)
        if header_end < len(data):
            data[rng.randrange(header_end, len(data))] = rng.randrange(256)
    return bytes(data)


def _mutate_config(rng: random.Random, config: dict) -> dict:
    """Replace one value somewhere in the JSON tree with a random one of another kind."""
    def nodes(node, path=()):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            yield path + (k,)
            yield from nodes(v, path + (k,))
    paths = list(nodes(config))
    if not paths:
        return config
    path = rng.choice(paths)
    parent = config
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = rng.choice([None, -1, 0, 3, 2**40, 1.5, "", "re:(", "Linear", "group", "sparse-bitmask",
                                   "pack-quantized", "float", [], {}, ["re:.*"], {"weights": {}}, True])
    return config


def test_fuzz_mutated_checkpoints_never_crash(tmp_path, checkpoints):
    rng = random.Random(1234)
    sources = sorted(checkpoints)
    outcomes = {"loaded": 0, "CheckpointError": 0}
    x = torch.randn(2, 72)
    for case in range(FUZZ_CASES):
        source = checkpoints[sources[case % len(sources)]]
        directory = tmp_path / f"case{case}"
        shutil.copytree(source, directory)
        if rng.random() < 0.2:
            config = json.loads((directory / "config.json").read_text())
            (directory / "config.json").write_text(json.dumps(_mutate_config(rng, config)))
        else:
            files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
            target = directory / rng.choice(files)
            target.write_bytes(_mutate(rng, target.read_bytes()))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = sparseinfer.load(directory, mlp())
                sparseinfer.inspect(directory)
            model(x)  # whatever loaded must run
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["CheckpointError"] += 1
        except Exception as exc:  # anything else is a bug: report the case to reproduce it
            raise AssertionError(f"case {case} ({source.name}): {type(exc).__name__}: {exc}") from exc
        shutil.rmtree(directory)
    assert sum(outcomes.values()) == FUZZ_CASES >= 1000
    print("fuzz outcomes:", outcomes)
    assert outcomes["CheckpointError"] > FUZZ_CASES // 3 and outcomes["loaded"] > 0, outcomes
