"""Whole-layer (block) dropping: checked against a freshly built, shallower model that loads the
kept blocks' weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseinfer.compress.layer_drop import drop_layers, find_layer_list, layer_importance
from compress_models import (assert_state_unchanged, lm_loss, state_copy, tiny_bert, tiny_encoder, tiny_gpt2,
                             tiny_llama, token_ids)


def shallower_llama_with(model, kept):
    fresh = tiny_llama(layers=len(kept))
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.layers."):
            index, rest = key[len("model.layers."):].split(".", 1)
            if int(index) not in kept:
                continue
            key = f"model.layers.{kept.index(int(index))}.{rest}"
        state[key] = value
    fresh.load_state_dict(state)
    return fresh


def test_drop_llama_layers_equals_shallower_model_and_generates():
    model = tiny_llama(layers=4)
    ref = shallower_llama_with(model, [0, 3])
    drop_layers(model, [2, 1])
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    ids = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    prompt = token_ids(1, 4)
    settings = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0,
                    attention_mask=torch.ones_like(prompt))
    assert torch.equal(model.generate(prompt, **settings), ref.generate(prompt, **settings))


def test_drop_gpt2_and_bert_layers_equal_shallower_models():
    for build, path, run in [(tiny_gpt2, "transformer.h", lambda m, x: m(x).logits),
                             (tiny_bert, "encoder.layer", lambda m, x: m(x).last_hidden_state)]:
        model = build(layers=3)
        fresh = build(layers=2)
        prefix = path + "."
        state = {}
        for key, value in model.state_dict().items():
            if key.startswith(prefix):
                index, rest = key[len(prefix):].split(".", 1)
                if index == "1":
                    continue
                key = f"{prefix}{0 if index == '0' else 1}.{rest}"
            state[key] = value
        fresh.load_state_dict(state)
        assert find_layer_list(model)[0] == path
        drop_layers(model, [1])
        assert model.config.num_hidden_layers == 2
        ids = token_ids()
        with torch.no_grad():
            torch.testing.assert_close(run(model, ids), run(fresh, ids))


def test_drop_layers_of_torch_encoder_and_custom_path():
    model = tiny_encoder(layers=3)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = model.layers[2](model.layers[0](x))
        drop_layers(model, [1])
        torch.testing.assert_close(model(x), expected)
    assert model.num_layers == 2

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    stack = Stack()
    kept = [stack.blocks[0], stack.blocks[2]]
    drop_layers(stack, [1], layers_path="blocks")
    assert list(stack.blocks) == kept


def test_layer_importance_finds_an_identity_block():
    model = tiny_llama(layers=4)
    with torch.no_grad():  # block 2 adds nothing to the residual stream
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    batches = [token_ids(), token_ids()]
    cosine = layer_importance(model, batches, lm_loss, method="cosine")
    assert cosine.shape == (4,) and cosine[2] < 1e-6 and int(cosine.argmin()) == 2
    loss = layer_importance(model, batches, lm_loss, method="loss")
    assert abs(float(loss[2])) < 1e-6
    # loss increase of skipping block 1 == loss of the model without it minus the baseline
    without = shallower_llama_with(model, [0, 2, 3])
    with torch.no_grad():
        baseline = sum(float(lm_loss(model, b)) for b in batches) / 2
        skipped = sum(float(lm_loss(without, b)) for b in batches) / 2
    assert abs(float(loss[1]) - (skipped - baseline)) < 1e-5


def test_layer_drop_rejects_bad_input_before_mutating():
    model = tiny_llama(layers=3)
    before = state_copy(model)
    for bad, error, message in [([3], ValueError, "out of range"), ([0, 0], ValueError, "repeats"),
                                ([0, 1, 2], ValueError, "all 3 blocks"), ([True], TypeError, "must be ints"),
                                (1, TypeError, "list of block indices")]:
        with pytest.raises(error, match=message):
            drop_layers(model, bad)
        assert_state_unchanged(model, before)
    assert model.config.num_hidden_layers == 3
    with pytest.raises(ValueError, match="names no module"):
        drop_layers(model, [0], layers_path="model.blocks")
    with pytest.raises(TypeError, match="not an nn.ModuleList"):
        drop_layers(model, [0], layers_path="model.norm")
    with pytest.raises(ValueError, match="layers_path"):
        drop_layers(nn.Sequential(nn.Linear(2, 2)), [0])
    with pytest.raises(ValueError, match="method"):
        layer_importance(model, [token_ids()], lm_loss, method="angular")
    with pytest.raises(ValueError, match="empty"):
        layer_importance(model, [], lm_loss)
    gpt2 = tiny_gpt2(layers=3, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        drop_layers(gpt2, [0])
    assert len(gpt2.transformer.h) == 3
    drop_layers(gpt2, [2])  # the last block: no block is renumbered
