"""Tiny models and helpers the compression tests share (head pruning, layer dropping)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

VOCAB = 40


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_copy(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def tiny_llama(kv_heads=4, layers=2, dtype=torch.float32):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=kv_heads, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def tiny_gpt2(layers=2, **extra):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=32,
                                     **extra)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_bert(layers=2):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers,
                                     num_attention_heads=4, intermediate_size=48, max_position_embeddings=32)
    return transformers.BertModel(config).eval()


def tiny_encoder(batch_first=True, layers=2):
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False).eval()


def token_ids(batch=2, length=7):
    return torch.randint(0, VOCAB, (batch, length))


def lm_loss(model, ids):
    """Next-token cross-entropy in the model's dtype (HF's own loss upcasts to float32 only)."""
    logits = model(ids).logits
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
