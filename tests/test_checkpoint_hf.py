"""Hugging Face models end to end: a Llama-style and a GPT-2-style model built from a config (no
download), pruned or quantized, saved, loaded with sparseinfer.load(directory) (model built from
config.json on meta), same logits, generate() works."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is an optional test dependency "
                                                          "(pip install '.[compat]')")

import sparseinfer  # noqa: E402
from sparseinfer import CSRLinear, Int8Linear, Sparse24Linear  # noqa: E402
from sparseinfer.checkpoint import CheckpointError  # noqa: E402
from sparseinfer.checkpoint.skeleton import build_hf_model  # noqa: E402
from sparseinfer.compress import prune_2_4  # noqa: E402
from sparseinfer.nn.linear_like import is_linear_like, linear_weight  # noqa: E402

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64),
}
MODELS = {"llama": lambda: transformers.LlamaForCausalLM, "gpt2": lambda: transformers.GPT2LMHeadModel}


def _hf_model(arch, dtype):
    """Built as from_pretrained builds it: parameters in `dtype`, fp32 buffers stay fp32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        config = CONFIGS[arch]()
        config.torch_dtype = dtype
        return MODELS[arch]()(config)
    finally:
        torch.set_default_dtype(previous)


LAYER = {"csr": CSRLinear, "2:4": Sparse24Linear, "int8": Int8Linear}
IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79], [2, 71, 82, 81, 82, 84, 59, 4]])


def _body(name):
    """Every Linear / Conv1D but the LM head (kept dense, as llm-compressor recipes do)."""
    return name != "lm_head"


def _compressed(arch, fmt, dtype=torch.float32):
    torch.manual_seed(0)
    model = _hf_model(arch, dtype).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if is_linear_like(module) and _body(name) and fmt != "int8":
                weight, _ = linear_weight(module)
                pruned = prune_2_4(weight.float()) if fmt == "2:4" else weight * (torch.rand(weight.shape) > 0.8)
                pruned = pruned.to(dtype)
                module.weight.copy_(pruned if type(module) is torch.nn.Linear else pruned.t())
    report = sparseinfer.sparsify(model, fmt, filter=lambda name, m: _body(name))
    assert len(report.converted) == (14 if arch == "llama" else 8)
    return model


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("fmt", ["csr", "2:4", "int8"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compressed_hf_model_round_trip(tmp_path, arch, fmt):
    model = _compressed(arch, fmt)
    expected = _logits(model)
    sparseinfer.save(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [type(model).__name__] and "quantization_config" in config
    loaded = sparseinfer.load(tmp_path)
    assert type(loaded) is type(model)
    kinds = {type(m) for n, m in loaded.named_modules() if n and _body(n) and (is_linear_like(m) or type(m) in LAYER.values())}
    assert kinds == {LAYER[fmt]}
    assert torch.equal(_logits(loaded), expected)
    generated = loaded.generate(IDS[:1, :4], attention_mask=torch.ones(1, 4, dtype=torch.long), max_new_tokens=6,
                                do_sample=False, pad_token_id=0)
    assert torch.equal(generated, model.generate(IDS[:1, :4], attention_mask=torch.ones(1, 4, dtype=torch.long),
                                                 max_new_tokens=6, do_sample=False, pad_token_id=0))
    assert generated.shape == (1, 10)


def test_gpt2_tied_head_stays_tied(tmp_path):
    model = _compressed("gpt2", "csr")
    sparseinfer.save(model, tmp_path)
    loaded = sparseinfer.load(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_bf16_llama_loads_in_bf16(tmp_path):
    model = _compressed("llama", "int8", torch.bfloat16)
    expected = _logits(model)
    sparseinfer.save(model, tmp_path)
    loaded = sparseinfer.load(tmp_path)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert torch.equal(_logits(loaded), expected)


def test_skeleton_is_built_on_meta_without_init(tmp_path, monkeypatch):
    """load(model=None) builds parameters on meta: no memory, no random init spent on them."""
    model = _compressed("llama", "csr")
    sparseinfer.save(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    skeleton = build_hf_model(str(tmp_path), config)
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert all(b.device.type == "cpu" for b in skeleton.buffers())  # rotary tables computed for real
    calls = []
    monkeypatch.setattr(torch.Tensor, "normal_", lambda self, *a, **k: calls.append(self.device.type) or self)
    sparseinfer.load(tmp_path)
    assert set(calls) <= {"meta"}


def test_sharded_hf_checkpoint(tmp_path):
    model = _compressed("llama", "2:4")
    files = sparseinfer.save(model, tmp_path, max_shard_size="30KB")
    assert sum(f.endswith(".safetensors") for f in files) > 2
    assert torch.equal(_logits(sparseinfer.load(tmp_path)), _logits(model))


def test_bad_hf_config_is_named(tmp_path):
    sparseinfer.save(_compressed("gpt2", "int8"), tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "architectures": ["NoSuchModel"]}))
    with pytest.raises(CheckpointError, match=r"architectures\[0\] = 'NoSuchModel' is not a transformers model class"):
        sparseinfer.load(tmp_path)
    path.write_text(json.dumps({**config, "n_head": 5}))  # 64 is not divisible by 5 heads
    with pytest.raises(CheckpointError, match=r"transformers cannot build GPT2LMHeadModel"):
        sparseinfer.load(tmp_path)
    path.write_text(json.dumps({**config, "n_embd": 96}))
    with pytest.raises(CheckpointError, match=r"tensor transformer\.wte\.weight: shape \(128, 64\) does not match "
                                              r"the model's \(128, 96\)|weight shape"):
        sparseinfer.load(tmp_path)
