"""sparseinfer.generate: the same greedy tokens as Hugging Face generate for the Llama family
(dense and every registered format), eos stopping, batches, and clear errors otherwise."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparseinfer
from sparseinfer import registry
from sparseinfer.generation import generate


def _hf(model, prompt, n):
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)


def _model(kind="llama", seed=0, **overrides):
    torch.manual_seed(seed)
    common = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
    common.update(overrides)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]
    model = cls[1](cls[0](**common)).eval()
    with torch.no_grad():  # larger weights than HF's init so that tokens vary
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_same_tokens_as_hf_generate(kind):
    model = _model(kind)
    prompt = torch.randint(3, 300, (1, 7), generator=torch.Generator().manual_seed(1))
    assert generate(model, prompt, 24).tolist() == _hf(model, prompt, 24).tolist()


def test_llama3_rope_scaling_and_explicit_head_dim():
    model = _model(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                   head_dim=48)
    prompt = torch.randint(3, 300, (1, 5), generator=torch.Generator().manual_seed(2))
    assert generate(model, prompt, 16).tolist() == _hf(model, prompt, 16).tolist()


@pytest.mark.parametrize("fmt", list(registry.names()))
def test_same_tokens_with_every_format(fmt):
    model = _model(seed=3)
    spec = registry.get(fmt)
    if spec.prune is not None:
        with torch.no_grad():
            for name, m in model.named_modules():
                if isinstance(m, torch.nn.Linear) and name != "lm_head":
                    m.weight.copy_(spec.prune(m.weight, 0.6))
    report = sparseinfer.sparsify(model, fmt)
    assert report.converted
    prompt = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(4))
    ours = generate(model, prompt, 16)
    if spec.quant_scheme is None:  # float formats: the same tokens
        assert ours.tolist() == _hf(model, prompt, 16).tolist()
    else:
        # W8A8 quantizes each token's activations: a last-bit difference in a norm (fused
        # F.rms_norm here) can move a rounding step, so tokens may part where two logits are
        # nearly tied. Teacher-forced through HF's forward, each of our tokens must be (nearly)
        # HF's argmax.
        with torch.no_grad():
            logits = model(ours).logits[0, 5:-1]
        picked = logits.gather(1, ours[0, 6:, None])[:, 0]
        assert (picked >= logits.max(-1).values - 2e-2 * logits.abs().max()).all()


def test_batch_and_bf16():
    model = _model(seed=5)
    prompt = torch.randint(3, 300, (3, 5), generator=torch.Generator().manual_seed(5))
    assert generate(model, prompt, 8).tolist() == _hf(model, prompt, 8).tolist()
    model = model.to(torch.bfloat16)
    out = generate(model, prompt[:1], 8)
    assert out.shape == (1, 13)


def test_eos_stops_and_on_token_counts():
    model = _model(seed=6)
    prompt = torch.randint(3, 300, (1, 4), generator=torch.Generator().manual_seed(6))
    free = generate(model, prompt, 12)
    eos = int(free[0, 4 + 3])  # the 4th new token
    steps = []
    out = generate(model, prompt, 12, eos_token_id=eos, on_token=steps.append)
    first = (out[0, 4:] == eos).nonzero()[0].item()
    assert out.shape[1] == 4 + first + 1 and first <= 3
    assert steps == list(range(first + 1))


def test_errors_name_the_problem():
    model = _model()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, ids.float(), 4)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, torch.tensor([[1, 999]]), 4)
    with pytest.raises(ValueError, match="at least one"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids, 0)
    model.train()
    with pytest.raises(ValueError, match="eval"):
        generate(model, ids, 2)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).eval()
    with pytest.raises(ValueError, match="model.generate"):
        generate(gpt2, ids, 2)
    gelu = _model(hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act"):
        generate(gelu, ids, 2)
    windowed = _model("mistral", sliding_window=4)
    with pytest.raises(ValueError, match="sliding window"):
        generate(windowed, ids, 8)
