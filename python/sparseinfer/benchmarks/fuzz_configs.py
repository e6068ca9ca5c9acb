"""Mutations of a checkpoint's JSON files for `sparseinfer fuzz-load`: any value of config.json
(numbers huge / negative / NaN, strings, nesting), its structure (missing, extra, renamed keys,
swapped subtrees), Hugging Face model fields (sizes that build huge buffers, dtypes, classes,
attention implementations), the shard index, and code-execution bait (auto_map naming a Python
file in the checkpoint, a pickle). Each returns a one-line description; a deeply nested value is
spliced into the text because json.dumps itself cannot write it."""
from __future__ import annotations

import json
import os
import pickle
import random

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
_DEEP = "\u0000DEEP\u0000"        # placeholders replaced in the written text
_DEEP_TEXTS = {"[": "[" * 100_000 + "]" * 100_000, "{": '{"a":' * 100_000 + "0" + "}" * 100_000}

VALUES = [None, True, False, 0, 1, -1, 2, 3, 4, 7, 8, 16, 32, 33, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
          2**63 - 1, 2**63, 2**64, 10**30, -2**63, 0.5, -0.0, 1.5, 1e-320, 1e308, -1e308,
          float("nan"), float("inf"), float("-inf"), "", "0", "8", "-1", "1e9", "nan", "true", "null",
          "Linear", "re:.*", "re:(", "re:[", "re:(.*)*X", "re:(a|a)*b", "re:(\\w+\\.?)+!",
          "re:" + "(.?)" * 25 + ".{25}",
          "sparse-bitmask", "sparse-24-bitmask", "int-quantized", "pack-quantized", "dense", "naive-quantized",
          "float-quantized", "marlin-24", "nvfp4-pack-quantized", "mixed-precision", "sparseinfer-codebook",
          "channel", "group", "tensor", "token", "block",
          "int", "float", "static", "dynamic", "compressed-tensors", "\u0000", "\u00e9\u4e2d", "x" * 100_000,
          [], {}, [None], ["re:.*"], ["Linear"], ["lm_head"], [1, 2], {"weights": {}}, {"": None},
          {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
          {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 32},
          {"version": 1, "index_bits": 4, "entries": 16, "config_groups": {"group_0": {"group_size": None}}},
          _DEEP + "[", _DEEP + "{", [0] * 200_000]


def _dumps(value) -> str:
    text = json.dumps(value)
    for key, deep in _DEEP_TEXTS.items():
        text = text.replace(json.dumps(_DEEP + key), deep)
    return text


def _read(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(_dumps(value))


def _paths(node, path=()):
    """Every (path) to a value inside the JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield path + (k,)
        yield from _paths(v, path + (k,))


def _parent(tree, path):
    for k in path[:-1]:
        tree = tree[k]
    return tree


def _show(value) -> str:
    text = repr(value)
    if isinstance(value, str) and value.startswith(_DEEP):
        return f"<{len(_DEEP_TEXTS[value[-1]]) // 2}-deep {value[-1]}>"
    return text if len(text) <= 40 else text[:37] + f"... ({len(text)} chars)"


def config_values(rng: random.Random, directory: str) -> str:
    path = os.path.join(directory, CONFIG)
    config = _read(path)
    paths = list(_paths(config))
    value = rng.choice(VALUES)
    if not paths or rng.random() < 0.05:
        config = value if rng.random() < 0.5 else {"quantization_config": value}
        _write(path, config)
        return f"config.json -> {_show(config)}"
    where = rng.choice(paths)
    _parent(config, where)[where[-1]] = value
    _write(path, config)
    return f"config {'.'.join(map(str, where))} -> {_show(value)}"


def config_structure(rng: random.Random, directory: str) -> str:
    path = os.path.join(directory, CONFIG)
    config = _read(path)
    dict_paths = [p for p in _paths(config) if isinstance(_parent(config, p)[p[-1]], dict)] + [()]
    where = rng.choice(dict_paths)
    node = _parent(config, where + ("",)) if where else config
    keys = sorted(node)
    how = rng.choice(["delete", "delete", "extra", "rename", "swap", "empty", "listify", "copy-subtree"])
    name = ".".join(map(str, where)) or "<root>"
    if how == "delete" and keys:
        key = rng.choice(keys)
        del node[key]
        what = f"deleted {name}.{key}"
    elif how == "extra":
        key = rng.choice(["format", "targets", "ignore", "weights", "input_activations", "sparsity_config",
                          "config_groups", "quantization_config", "group_0", "group_1", "kv_cache_scheme",
                          "transform_config", "unknown", "", "__class__"])
        node[key] = rng.choice(VALUES)
        what = f"added {name}.{key} = {_show(node[key])}"
    elif how == "rename" and keys:
        key = rng.choice(keys)
        new = rng.choice([key.upper(), key + "_", key.replace("_", "-"), " " + key, key[:-1]])
        node[new] = node.pop(key)
        what = f"renamed {name}.{key} -> {new!r}"
    elif how == "swap" and len(keys) >= 2:
        a, b = rng.sample(keys, 2)
        node[a], node[b] = node[b], node[a]
        what = f"swapped {name}.{a} and .{b}"
    elif how == "listify" and where:
        _parent(config, where)[where[-1]] = [node, node] if rng.random() < 0.5 else list(node.values())
        what = f"{name} -> a list"
    elif how == "copy-subtree":
        other = rng.choice(dict_paths)
        donor = _parent(config, other + ("",)) if other else config
        key = rng.choice(keys) if keys else "x"
        node[key] = json.loads(json.dumps(donor))
        what = f"{name}.{key} -> a copy of {'.'.join(map(str, other)) or '<root>'}"
    else:
        node.clear()
        what = f"emptied {name}"
    _write(path, config)
    return "config " + what


_HF_NUMBERS = [0, -1, 1, 2, 3, 5, 7, 2**20, 2**31, 2**40, 10**12, 1.5, "64", None, True, float("nan"),
               float("inf"), -2**63]
HF_FIELDS = {
    **{k: _HF_NUMBERS for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                "head_dim", "pad_token_id", "bos_token_id", "eos_token_id")},
    "rope_theta": [0, -1.0, 1e308, float("nan"), "x", None],
    "rms_norm_eps": [0, -1.0, float("nan"), 1e308, "x"],
    "rope_scaling": [None, "linear", [], {}, {"rope_type": "linear", "factor": 1e308},
                     {"rope_type": "linear", "factor": -1}, {"rope_type": "dynamic", "factor": 2.0},
                     {"rope_type": "yarn", "factor": 0}, {"rope_type": "llama3"}, {"rope_type": "bogus"},
                     {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]},
                     {"type": "linear", "factor": 2**40}],
    "torch_dtype": ["float64", "float16", "bfloat16", "int8", "bool", "float8_e4m3fn", "complex64", "bogus",
                    "auto", 5, None, ["float32"]],
    "dtype": ["float64", "int8", "bogus", "auto", 5],
    "architectures": [["GPT2LMHeadModel"], ["LlamaModel"], ["AutoModel"], ["PreTrainedModel"], ["Trainer"],
                      ["__class__"], ["os"], [""], [1], "LlamaForCausalLM", [], None,
                      ["LlamaForCausalLM", "GPT2LMHeadModel"], ["BertModel"], ["LlamaForSequenceClassification"]],
    "model_type": ["gpt2", "bert", "bogus", "", None, 5, "llama4"],
    "tie_word_embeddings": [True, "yes", None],
    "attn_implementation": ["eager", "sdpa", "flash_attention_2", "flex_attention", "bogus",
                            "kernels-community/flash-attn"],
    "_attn_implementation": ["eager", "flash_attention_2", "bogus"],
    "hidden_act": ["gelu", "bogus", None, 5],
    "attention_bias": [True, "x"],
    "mlp_bias": [True],
    "layer_types": [["full_attention"] * 3, "x", None],
    "transformers_version": ["99.0.0", "", None, 5],
    "use_cache": [False, "x"],
}


def hf_config(rng: random.Random, directory: str) -> str:
    path = os.path.join(directory, CONFIG)
    config = _read(path)
    changes = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        key = rng.choice(sorted(HF_FIELDS))
        config[key] = rng.choice(HF_FIELDS[key])
        changes.append(f"{key}={_show(config[key])}")
    _write(path, config)
    return "hf config " + ", ".join(changes)


def shard_index(rng: random.Random, directory: str) -> str:
    path = os.path.join(directory, INDEX)
    if not os.path.exists(path):  # an index beside a single file: the loader reads the index
        files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
        index = {"metadata": {"total_size": 1}, "weight_map": {"0.bias": files[0] if files else "x.safetensors"}}
        _write(path, index)
        return "added an index mapping one tensor beside the single file"
    index = _read(path)
    weight_map = index.get("weight_map", {})
    names = sorted(weight_map)
    files = sorted(set(weight_map.values()))
    how = rng.choice(["file", "file", "file", "drop", "add", "map", "metadata"])
    if how == "file" and names:
        name = rng.choice(names)
        weight_map[name] = rng.choice(["../" + files[0], "/etc/passwd", "/dev/zero", "model.safetensors", ".",
                                       "", INDEX, CONFIG, "sub/" + files[0], files[0].upper(), files[-1],
                                       5, None, ["x"], files[0] + "\u0000"])
        what = f"{name} -> {_show(weight_map[name])}"
    elif how == "drop" and names:
        name = rng.choice(names)
        del weight_map[name]
        what = f"{name} dropped from the map"
    elif how == "add":
        count = rng.choice([1, 1, 100_000])
        for i in range(count):
            weight_map[f"ghost.{i}"] = rng.choice(files) if files else "x.safetensors"
        what = f"{count} unknown tensor name(s) mapped"
    elif how == "map":
        index["weight_map"] = rng.choice([None, [], "x", 5, {}, {"": ""}, [[names[0], files[0]]] if names else []])
        what = f"weight_map -> {_show(index['weight_map'])}"
    else:
        index["metadata"] = rng.choice([None, 5, {"total_size": -1}, {"total_size": 2**64}, {"total_size": "x"}])
        what = f"metadata -> {_show(index['metadata'])}"
    _write(path, index)
    return "index " + what


_PAYLOAD = """import os
open({marker!r}, "w").write("executed")
os.environ["SPARSEINFER_FUZZ_PWNED"] = "1"
"""


class _Pickled:
    """Unpickling this runs code that writes the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('executed')",))


def code_exec(rng: random.Random, directory: str, marker: str) -> str:
    """Bait that runs code writing `marker` if any part of the load imports or unpickles it."""
    module = rng.choice(["configuration_fuzz", "modeling_fuzz", "__init__"])
    with open(os.path.join(directory, f"{module}.py"), "w") as f:
        f.write(_PAYLOAD.format(marker=marker) + "class FuzzConfig: pass\nclass FuzzModel: pass\n")
    how = rng.choice(["auto_map", "auto_map", "auto_map-arch", "pickle", "pickle-only"])
    if how.startswith("pickle"):
        name = rng.choice(["pytorch_model.bin", "model.bin", "model.pt", "training_args.bin"])
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(_Pickled(marker), f)
        if how == "pickle-only":
            for file in os.listdir(directory):
                if file.endswith(".safetensors"):
                    os.remove(os.path.join(directory, file))
        return f"code bait: {name} pickle{' (no safetensors left)' if how == 'pickle-only' else ''}, {module}.py"
    path = os.path.join(directory, CONFIG)
    config = _read(path)
    if not isinstance(config, dict):
        config = {}
    config["auto_map"] = {"AutoConfig": f"{module}.FuzzConfig", "AutoModel": f"{module}.FuzzModel",
                          "AutoModelForCausalLM": f"{module}.FuzzModel"}
    if how == "auto_map-arch":
        config["architectures"] = ["FuzzModel"]
        config["model_type"] = rng.choice(["fuzz", config.get("model_type", "llama")])
    if rng.random() < 0.5:
        config["trust_remote_code"] = True
    _write(path, config)
    return f"code bait: config auto_map -> {module}.py ({how})"
