"""Hostile Hugging Face config.json files (issue #23): loading never runs or offers to run code
from the checkpoint, config dimensions that disagree with the stored tensors are refused before
anything real is built (no layer-count or buffer bombs), the skeleton build changes nothing other
threads see, and configs without a usable ``architectures`` are handled as transformers would
or refused clearly. Allocating regressions are bounded by an address-space cap around the call."""
import json
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="transformers is an optional test dependency "
                                                          "(pip install '.[compat]')")

import sparseinfer  # noqa: E402
from sparseinfer.checkpoint import CheckpointError  # noqa: E402
from checkpoint_models import memory_cap  # noqa: E402

LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])


def _save(directory, model):
    sparseinfer.save(model.eval(), directory)
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    sparseinfer.sparsify(model, "int8", filter=lambda name, m: name != "lm_head")
    return _save(tmp_path_factory.mktemp("llama") / "c", model)


def _edited(src, dst, edit=None, **changes):
    import shutil
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    if edit is not None:
        edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


# --- item 1: no code execution, no prompt --------------------------------------------------

EVIL = """
import os
open(os.environ["SPARSEINFER_TEST_MARKER"], "w").write("custom code ran")
from transformers import LlamaConfig
class EvilConfig(LlamaConfig):
    model_type = "evilmodel"
"""

CHILD = """
import sys, sparseinfer
from sparseinfer.checkpoint import CheckpointError
try:
    sparseinfer.load(sys.argv[1])
    print("LOADED")
except CheckpointError as exc:
    print("CheckpointError:", exc)
"""


def test_custom_code_is_never_offered_nor_run(tmp_path, llama_dir):
    """Unknown model_type + auto_map: transformers asked "run the custom code? [y/N]" and, with
    'y' on stdin, imported evil.py from the checkpoint. Run in a child with 'y' piped in."""
    directory = _edited(llama_dir, tmp_path / "c", model_type="evilmodel",
                        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (directory / "evil.py").write_text(EVIL)
    marker = tmp_path / "marker"
    env = {**os.environ, "SPARSEINFER_TEST_MARKER": str(marker), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", CHILD, str(directory)], input="y\ny\n", capture_output=True,
                            text=True, env=env, timeout=240)
    assert not marker.exists(), "code from the checkpoint directory ran"
    assert "run the custom code" not in result.stdout + result.stderr
    assert "CheckpointError: config.json has 'auto_map'" in result.stdout, result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "evilmodel"}, r"model_type 'evilmodel' is not a model type transformers .* knows"),
    ({"attn_implementation": "someone/evil-kernel"}, r"attn_implementation is 'someone/evil-kernel'"),
    ({"_attn_implementation": "kernels-community/flash-attn"}, r"_attn_implementation is 'kernels-community"),
], ids=["unknown-type", "hub-kernel", "hub-kernel-private-key"])
def test_configs_that_could_run_code_are_refused(tmp_path, llama_dir, changes, message):
    directory = _edited(llama_dir, tmp_path / "c", **changes)
    with pytest.raises(CheckpointError, match=message):
        sparseinfer.load(directory)


def test_auto_map_of_a_known_type_is_ignored_not_run(tmp_path, llama_dir, monkeypatch):
    """A type transformers ships with a leftover auto_map (Phi-3-style configs): its own classes are
    built, with a warning; the checkpoint's Python file is never imported."""
    directory = _edited(llama_dir, tmp_path / "c",
                        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    (directory / "evil.py").write_text(EVIL)
    marker = tmp_path / "marker"
    monkeypatch.setenv("SPARSEINFER_TEST_MARKER", str(marker))
    with pytest.warns(UserWarning, match="auto_map ignored"):
        model = sparseinfer.load(directory)
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()


# --- item 2: config dimensions against the stored tensors, bounded buffers ---------------------

def test_layer_count_bomb_is_refused_before_building(tmp_path, llama_dir):
    """num_hidden_layers: 1000000 over 2 stored layers grew past 4 GB in 80 s."""
    directory = _edited(llama_dir, tmp_path / "c", num_hidden_layers=1_000_000)
    with memory_cap(), pytest.raises(CheckpointError, match=r"num_hidden_layers = 1000000, but the checkpoint's "
                                                            r"tensors hold 2 layer\(s\) under model\.layers"):
        sparseinfer.load(directory)


@pytest.mark.parametrize("layers", [3, 2**40])
def test_layers_the_config_builds_must_be_stored(tmp_path, llama_dir, layers):
    directory = _edited(llama_dir, tmp_path / "c", num_hidden_layers=layers)
    with memory_cap(), pytest.raises(CheckpointError, match=rf"num_hidden_layers = {layers}, but the checkpoint's tensors hold "
                                              r"2 layer\(s\) under model\.layers \(indices 0\.\.1\)"):
        sparseinfer.load(directory)


@pytest.mark.parametrize("value", [-1, 2.0, "2", True])
def test_layer_count_must_be_a_count(tmp_path, llama_dir, value):
    directory = _edited(llama_dir, tmp_path / "c", num_hidden_layers=value)
    with memory_cap(), pytest.raises(CheckpointError, match=r"num_hidden_layers must be a non-negative integer|transformers cannot|LlamaConfig expects int"):
        sparseinfer.load(directory)


def test_fewer_layers_than_stored_load_with_a_warning(tmp_path, llama_dir):
    """Stored layers the config does not build (e.g. multi-token-prediction heads) are unexpected
    tensors, as before: warned of, not refused."""
    directory = _edited(llama_dir, tmp_path / "c", num_hidden_layers=1)
    with pytest.warns(UserWarning, match=r"tensor\(s\) match nothing in the model and were ignored: model\.layers\.1\."):
        model = sparseinfer.load(directory)
    assert len(model.model.layers) == 1


def test_buffer_bomb_from_head_dim_is_refused(tmp_path):
    """num_hidden_layers=0, head_dim=4e8: a 170 KB checkpoint loaded to 2.7 GB of rotary buffers."""
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, "num_hidden_layers": 0}))
    directory = _edited(_save(tmp_path / "src", model), tmp_path / "c", head_dim=400_000_000)
    with memory_cap(), pytest.raises(CheckpointError, match=r"would compute \d+ bytes of buffers \(largest: "
                                                            r"model\.rotary_emb\.inv_freq"):
        sparseinfer.load(directory)


def test_gpt2_position_bomb_is_refused_before_building(tmp_path):
    """n_positions sizes GPT-2's causal-mask buffers (n^2 bytes a layer): 1e5 asked for 20 GB."""
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                                                 n_positions=64))
    directory = _edited(_save(tmp_path / "src", model), tmp_path / "c", n_positions=100_000)
    with memory_cap(), pytest.raises(CheckpointError, match=r"tensor transformer\.wpe\.weight: shape \(64, 64\) "
                                                            r"does not match the model's \(100000, 64\)"):
        sparseinfer.load(directory)


def test_expert_count_bomb_runs_out_of_module_budget(tmp_path):
    """A count the layer check does not know (MoE experts) is bounded by the module budget."""
    config = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=2,
                                        num_experts_per_tok=1, max_position_embeddings=32)
    directory = _edited(_save(tmp_path / "src", transformers.MixtralForCausalLM(config)), tmp_path / "c",
                        num_local_experts=1_000_000)
    with memory_cap(), pytest.raises(CheckpointError, match=r"describes a model of more than \d+ submodules"):
        sparseinfer.load(directory)


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": 96}, r"tensor model\.layers\.0\.self_attn\.q_proj\.weight: weight shape \(64, 64\) does not match "
                         r"the model's layer \[out, in\] = \(64, 96\)"),
    ({"vocab_size": 4096}, r"tensor model\.embed_tokens\.weight: shape \(128, 64\) does not match"),
    ({"head_dim": 32}, r"tensor model\.layers\.0\.self_attn\.q_proj\.weight: weight shape \(64, 64\) does not match "
                       r"the model's layer \[out, in\] = \(128, 64\)"),
    ({"intermediate_size": 10**7}, r"tensor model\.layers\.0\.mlp\.gate_proj\.weight: weight shape"),
    ({"num_key_value_heads": 4}, r"tensor model\.layers\.0\.self_attn\.k_proj\.weight: weight shape \(32, 64\)"),
], ids=["hidden", "vocab", "head_dim", "intermediate", "kv_heads"])
def test_dimensions_are_checked_on_meta_before_the_real_build(tmp_path, llama_dir, monkeypatch, changes, message):
    from sparseinfer.checkpoint import skeleton
    builds = []
    real_build = skeleton._build
    monkeypatch.setattr(skeleton, "_build", lambda *a, meta, **k: builds.append(meta) or real_build(*a, meta=meta, **k))
    directory = _edited(llama_dir, tmp_path / "c", **changes)
    with memory_cap(), pytest.raises(CheckpointError, match=message):
        sparseinfer.load(directory)
    assert builds == [True], "the model was built for real before its dimensions were checked"


# --- item 4: nothing process-wide while the skeleton is built ----------------------------------

def test_skeleton_build_changes_nothing_other_threads_see(tmp_path, monkeypatch):
    """The old build patched nn.Module.register_parameter for the whole process (modules built
    in other threads got meta parameters), skipped torch.nn.init process-wide (no_init_weights)
    and set the process default dtype to the config's. A thread that builds a Linear while the
    skeleton is being built must see none of it."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA, torch_dtype=torch.bfloat16))
    finally:
        torch.set_default_dtype(previous)
    directory = _save(tmp_path / "c", model)
    init = torch.nn.init.kaiming_uniform_
    seen = []

    def other_thread():
        layer = nn.Linear(16, 16)
        seen.append((layer.weight.device.type, layer.weight.dtype, torch.nn.init.kaiming_uniform_ is init,
                     torch.get_default_dtype()))

    post_init = transformers.LlamaForCausalLM.post_init

    def post_init_with_a_neighbour(self):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        return post_init(self)

    monkeypatch.setattr(transformers.LlamaForCausalLM, "post_init", post_init_with_a_neighbour)
    loaded = sparseinfer.load(directory)
    assert seen and all(s == ("cpu", torch.float32, True, torch.float32) for s in seen), seen
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.model.rotary_emb.inv_freq.dtype == torch.float32  # as transformers builds it
    assert torch.equal(_logits(loaded), _logits(model))
    assert nn.Linear(4, 4).weight.device.type == "cpu"  # and nothing is left behind in this thread


def test_concurrent_loads_in_threads(llama_dir):
    results, errors = [], []

    def load():
        try:
            results.append(_logits(sparseinfer.load(llama_dir)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 3 and all(torch.equal(r, results[0]) for r in results)
    # the old build patched and restored nn.Module.register_parameter around each build; two builds
    # interleaved restored each other's patch and left every later module on meta
    assert nn.Linear(4, 4).weight.device.type == "cpu"


# --- item 11: architectures -------------------------------------------------------------------

def test_config_without_architectures_builds_the_causal_lm(tmp_path, llama_dir):
    directory = _edited(llama_dir, tmp_path / "c", edit=lambda c: c.pop("architectures"))
    loaded = sparseinfer.load(directory)
    assert type(loaded) is transformers.LlamaForCausalLM
    assert torch.equal(_logits(loaded), _logits(sparseinfer.load(llama_dir)))


@pytest.mark.parametrize("arch, message", [
    ("PreTrainedModel", r"'PreTrainedModel' is an abstract base class, not a concrete architecture"),
    ("LlamaPreTrainedModel", r"'LlamaPreTrainedModel' is an abstract base class"),
    ("GPT2LMHeadModel", r"'GPT2LMHeadModel' takes a GPT2Config, but model_type names LlamaConfig"),
])
def test_abstract_or_mismatched_architectures_are_refused(tmp_path, llama_dir, arch, message):
    directory = _edited(llama_dir, tmp_path / "c", architectures=[arch])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=message):
            sparseinfer.load(directory)


def test_no_architectures_and_no_causal_lm_is_refused(tmp_path):
    directory = tmp_path / "c"
    sparseinfer.save(nn.Linear(4, 4), directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(CheckpointError, match=r"no 'architectures'.* no causal-LM class for model_type 'vit'"):
        sparseinfer.load(directory)


@pytest.mark.parametrize("changes, message", [
    ({"rms_norm_eps": "x"}, r"rms_norm_eps is 'x'; LlamaConfig expects float"),
    ({"pad_token_id": True}, r"pad_token_id is True; LlamaConfig expects an integer token id"),
    ({"hidden_act": 3}, r"hidden_act is 3; LlamaConfig expects str"),
    ({"dtype": "float64"}, r"dtype 'float64' is not one of"),
], ids=["float-as-string", "bool-token-id", "int-as-string-setting", "float64"])
def test_settings_of_the_wrong_type_are_refused_before_a_forward_fails(tmp_path, llama_dir, changes, message):
    """Found by `sparseinfer fuzz-load`: transformers accepted these and the model failed at its
    first forward (TypeError / ValueError) instead of the load raising CheckpointError."""
    directory = _edited(llama_dir, tmp_path / "c", **changes)
    with pytest.raises(CheckpointError, match=message):
        sparseinfer.load(directory)
