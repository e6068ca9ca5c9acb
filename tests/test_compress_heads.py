"""Attention-head pruning.

The key property: a head-pruned model computes what the original computes with those heads
silenced. The oracle silences them independently of our code, by zeroing the heads' columns of
the output projection in a copy of the original (and, for nn.MultiheadAttention, letting torch's
own implementation run it). Layer dropping is in test_compress_layer_drop.py.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparseinfer.compress.heads import (HeadPruningReport, PrunedMultiheadAttention, attention_modules,
                                        head_counts, head_gates, head_importance, prune_heads,
                                        prune_heads_by_importance)
from compress_models import (VOCAB, assert_state_unchanged, lm_loss, n_params, state_copy, tiny_bert,
                             tiny_encoder, tiny_gpt2, tiny_llama, token_ids)


def zero_out_columns(weight: torch.Tensor, heads, head_dim: int, *, rows: bool = False) -> None:
    """Silence heads by zeroing their slice of the output projection's input dimension."""
    with torch.no_grad():
        for h in heads:
            if rows:  # HF Conv1D stores [in, out]
                weight[h * head_dim:(h + 1) * head_dim, :] = 0
            else:
                weight[:, h * head_dim:(h + 1) * head_dim] = 0


def silenced_copy(model: nn.Module, heads: dict, head_dims: dict) -> nn.Module:
    ref = copy.deepcopy(model)
    for name, hs in heads.items():
        module = ref.get_submodule(name)
        if isinstance(module, (nn.MultiheadAttention, PrunedMultiheadAttention)):
            zero_out_columns(module.out_proj.weight, hs, head_dims[name])
        elif hasattr(module, "o_proj"):
            zero_out_columns(module.o_proj.weight, hs, head_dims[name])
        elif hasattr(module, "c_proj"):
            zero_out_columns(module.c_proj.weight, hs, head_dims[name], rows=True)
        else:
            zero_out_columns(module.output.dense.weight, hs, head_dims[name])
    return ref


def gated_output(model, heads: dict, run):
    with head_gates(model) as gates, torch.no_grad():
        for name, hs in heads.items():
            gates[name][hs] = 0
        return run(model)


# ----------------------------------------------------------------- PrunedMultiheadAttention
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("variant", ["plain", "extras", "no_bias"])
def test_pruned_mha_with_all_heads_matches_torch(batch_first, variant):
    options = {"plain": {}, "no_bias": {"bias": False},
               "extras": {"add_bias_kv": True, "add_zero_attn": True, "kdim": 12, "vdim": 10}}[variant]
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first, **options).eval()
    ours = PrunedMultiheadAttention.from_multihead_attention(mha)
    q, k, v = torch.randn(3, 5, 16), torch.randn(3, 6, mha.kdim), torch.randn(3, 6, mha.vdim)
    if not batch_first:
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    causal = torch.ones(5, 6, dtype=torch.bool).triu(1)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    float_mask = torch.randn(3 * 4, 5, 6)
    for kwargs in ({}, {"attn_mask": causal, "key_padding_mask": padding},
                   {"attn_mask": float_mask, "average_attn_weights": False}, {"need_weights": False}):
        expected, expected_w = mha(q, k, v, **kwargs)
        out, w = ours(q, k, v, **kwargs)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
        if expected_w is None:
            assert w is None
        else:
            torch.testing.assert_close(w, expected_w, atol=1e-6, rtol=1e-5)
    # unbatched input
    torch.testing.assert_close(ours(q[0] if batch_first else q[:, 0], k[0] if batch_first else k[:, 0],
                                    v[0] if batch_first else v[:, 0])[0],
                               mha(q[0] if batch_first else q[:, 0], k[0] if batch_first else k[:, 0],
                                   v[0] if batch_first else v[:, 0])[0], atol=1e-6, rtol=1e-5)


def test_pruned_mha_reads_per_head_masks_of_the_original_and_prunes_again():
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    per_head = torch.randn(2 * 4, 5, 5)
    pruned = PrunedMultiheadAttention.from_multihead_attention(mha, keep_heads=[0, 2, 3])
    pruned.prune_heads([1])  # current index 1 = original head 2
    assert pruned.kept_heads == (0, 3) and pruned.num_heads == 2
    ref = copy.deepcopy(mha)
    zero_out_columns(ref.out_proj.weight, [1, 2], 4)
    torch.testing.assert_close(pruned(x, x, x, attn_mask=per_head)[0], ref(x, x, x, attn_mask=per_head)[0],
                               atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="causal"):
        pruned(x, x, x, is_causal=True)


@pytest.mark.parametrize("batch_first", [True, False])
def test_prune_mha_in_transformer_encoder_equals_silenced_heads(batch_first):
    model = tiny_encoder(batch_first)
    heads = {"layers.0.self_attn": [1, 3], "layers.1.self_attn": [0]}
    x = torch.randn(3, 6, 16) if batch_first else torch.randn(6, 3, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    run = lambda m: m(x, mask=mask)
    ref = silenced_copy(model, heads, {n: 4 for n in heads})
    gated = gated_output(model, heads, run)
    before = n_params(model)
    prune_heads(model, heads)
    assert isinstance(model.layers[0].self_attn, PrunedMultiheadAttention)
    assert head_counts(model) == {"layers.0.self_attn": 2, "layers.1.self_attn": 3}
    # per pruned head: q, k, v rows and out_proj columns (4 * 16 * head_dim) + q/k/v biases (3 * head_dim)
    assert before - n_params(model) == 3 * (4 * 16 * 4 + 3 * 4)
    with torch.no_grad():
        out = run(model)
        torch.testing.assert_close(out, run(ref), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, gated, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_pruned_encoder_with_padding_in_inference_mode():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2).eval()  # nested-tensor fast path enabled
    x = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 3:] = True
    ref = silenced_copy(model, {"layers.0.self_attn": [2]}, {"layers.0.self_attn": 4})
    prune_heads(model, {"layers.0.self_attn": [2]})
    with torch.no_grad():
        out, expected = model(x, src_key_padding_mask=padding), ref(x, src_key_padding_mask=padding)
    keep = ~padding  # torch's fast path returns zeros at padded positions
    torch.testing.assert_close(out[keep], expected[keep], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- Hugging Face models
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_prune_llama_equals_silenced_heads_and_generates(kv_heads):
    model = tiny_llama(kv_heads)
    ids = token_ids()
    heads = {"model.layers.0.self_attn": [0, 1], "model.layers.1.self_attn": [2, 3] if kv_heads == 2 else [1]}
    ref = silenced_copy(model, heads, {n: 8 for n in heads})
    run = lambda m: m(ids).logits
    gated = gated_output(model, heads, run)
    before = n_params(model)
    prune_heads(model, heads)
    assert head_counts(model) == {"model.layers.0.self_attn": 2,
                                  "model.layers.1.self_attn": 2 if kv_heads == 2 else 3}
    hidden, head_dim = 32, 8
    if kv_heads == 2:  # two whole groups: 2 q heads + 1 kv head each
        expected = 2 * (2 * 2 * head_dim * hidden + 2 * head_dim * hidden)
    else:  # 3 heads: q, k, v rows + o columns
        expected = 3 * 4 * head_dim * hidden
    assert before - n_params(model) == expected
    with torch.no_grad():
        torch.testing.assert_close(run(model), run(ref), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run(model), gated, atol=1e-5, rtol=1e-5)
    prompt = token_ids(1, 4)
    settings = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0,
                    attention_mask=torch.ones_like(prompt))
    assert torch.equal(model.generate(prompt, **settings), ref.generate(prompt, **settings))


def test_prune_gpt2_equals_silenced_heads_and_indices_are_current():
    model = tiny_gpt2()
    ids = token_ids()
    run = lambda m: m(ids).logits
    ref = silenced_copy(model, {"transformer.h.0.attn": [0, 2], "transformer.h.1.attn": [3]},
                        {"transformer.h.0.attn": 8, "transformer.h.1.attn": 8})
    before = n_params(model)
    prune_heads(model, {"transformer.h.0.attn": [2], "transformer.h.1.attn": [3]})
    prune_heads(model, {"transformer.h.0.attn": [0]})  # current head 0 is still original head 0
    assert head_counts(model) == {"transformer.h.0.attn": 2, "transformer.h.1.attn": 3}
    assert model.config.pruned_heads == {0: [0, 2], 1: [3]}
    assert before - n_params(model) == 3 * (4 * 8 * 32 + 3 * 8)  # c_attn cols + bias, c_proj rows
    with torch.no_grad():
        torch.testing.assert_close(run(model), run(ref), atol=1e-5, rtol=1e-5)


def test_prune_bert_equals_silenced_heads_and_round_trips(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_bert()
    ids = token_ids()
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 5:] = 0
    run = lambda m: m(ids, attention_mask=attention_mask).last_hidden_state
    heads = {"encoder.layer.0.attention": [1], "encoder.layer.1.attention": [0, 3]}
    assert set(attention_modules(model)) == set(heads)
    ref = silenced_copy(model, heads, {n: 8 for n in heads})
    gated = gated_output(model, heads, run)
    before = n_params(model)
    prune_heads(model, heads)
    assert before - n_params(model) == 3 * (4 * 8 * 32 + 3 * 8)
    with torch.no_grad():
        torch.testing.assert_close(run(model), run(ref), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run(model), gated, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = transformers.BertModel.from_pretrained(tmp_path).eval()
    assert head_counts(loaded) == head_counts(model)
    with torch.no_grad():
        torch.testing.assert_close(run(loaded), run(model))


# ----------------------------------------------------------------- importance
def test_weight_norm_scores_each_head_and_finds_a_planted_dead_head():
    model = tiny_llama()
    o_proj = model.model.layers[1].self_attn.o_proj
    zero_out_columns(o_proj.weight, [2], 8)
    scores = head_importance(model, method="weight_norm")
    expected = torch.stack([o_proj.weight[:, h * 8:(h + 1) * 8].detach().norm() for h in range(4)])
    torch.testing.assert_close(scores["model.layers.1.self_attn"], expected)
    assert scores["model.layers.1.self_attn"][2] == 0
    assert int(torch.cat(list(scores.values())).argmin()) == 4 + 2


def test_gradient_importance_finds_dead_head_and_leaves_the_model_as_it_was():
    model = tiny_llama()
    model.train()
    zero_out_columns(model.model.layers[0].self_attn.o_proj.weight, [3], 8)
    scores = head_importance(model, [token_ids(), token_ids()], lm_loss)
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert scores["model.layers.0.self_attn"][3] == 0
    assert int(torch.cat(list(scores.values())).argmin()) == 3


def test_gradient_importance_matches_finite_differences():
    # GPT-2 computes fully in float64 (Llama's RMSNorm upcasts to float32, too coarse for this).
    model = tiny_gpt2().double()
    batches = [token_ids(), token_ids()]
    scores = head_importance(model, batches, lm_loss)["transformer.h.1.attn"]
    # gate_h scales head h's input rows of c_proj (Conv1D [in, out]), so dL/dgate_h is the
    # derivative of the loss when those rows are scaled by (1 + eps).
    c_proj = model.transformer.h[1].attn.c_proj
    original = c_proj.weight.detach().clone()
    eps = 1e-6
    for head in range(4):
        derivatives = []
        for batch in batches:
            losses = []
            for sign in (1, -1):
                with torch.no_grad():
                    c_proj.weight.copy_(original)
                    c_proj.weight[head * 8:(head + 1) * 8] *= 1 + sign * eps
                    losses.append(float(lm_loss(model, batch)))
            derivatives.append(abs(losses[0] - losses[1]) / (2 * eps))
        expected = sum(derivatives) / len(derivatives)
        assert abs(float(scores[head]) - expected) <= 1e-5 * expected + 1e-9


def test_gradient_importance_on_torch_mha_finds_dead_head():
    model = tiny_encoder()
    zero_out_columns(model.layers[1].self_attn.out_proj.weight, [1], 4)
    batches = [torch.randn(2, 5, 16) for _ in range(2)]
    scores = head_importance(model, batches, lambda m, x: m(x).pow(2).mean())
    assert scores["layers.1.self_attn"][1] == 0 and int(torch.cat(list(scores.values())).argmin()) == 5
    assert torch.backends.mha.get_fastpath_enabled()


def test_prune_by_importance_global_and_layer_scopes():
    model = tiny_llama()
    scores = {"model.layers.0.self_attn": torch.tensor([4.0, 1.0, 3.0, 2.0]),
              "model.layers.1.self_attn": torch.tensor([1.0, 8.0, 9.0, 10.0])}
    before = n_params(model)
    report = prune_heads_by_importance(model, scores, 0.25)  # normalised: 1/sqrt(30) and 1/sqrt(246)
    assert isinstance(report, HeadPruningReport)
    assert report.pruned == {"model.layers.0.self_attn": [1], "model.layers.1.self_attn": [0]}
    assert report.heads_after == {"model.layers.0.self_attn": 3, "model.layers.1.self_attn": 3}
    assert report.params_before == before and report.params_after == n_params(model) < before
    assert "model.layers.1.self_attn" in str(report) and "8 -> 6" in str(report)

    model = tiny_llama()
    report = prune_heads_by_importance(model, scores, 0.5, scope="layer")
    assert report.pruned == {"model.layers.0.self_attn": [1, 3], "model.layers.1.self_attn": [0, 1]}
    model = tiny_llama()
    report = prune_heads_by_importance(model, scores, 0.9, min_heads=3, normalize=False)
    assert report.heads_after == {"model.layers.0.self_attn": 3, "model.layers.1.self_attn": 3}
    assert "note" in str(report)


def test_prune_by_importance_takes_whole_gqa_groups():
    model = tiny_llama(kv_heads=2)
    scores = {"model.layers.0.self_attn": torch.tensor([0.1, 5.0, 1.0, 1.0]),
              "model.layers.1.self_attn": torch.tensor([3.0, 3.0, 4.0, 4.0])}
    report = prune_heads_by_importance(model, scores, 0.25, normalize=False)
    assert report.pruned == {"model.layers.0.self_attn": [2, 3]}  # group mean 1.0 < 2.55
    assert model(token_ids()).logits.shape == (2, 7, VOCAB)


# ----------------------------------------------------------------- bad input
def test_prune_heads_rejects_bad_input_before_mutating():
    model = tiny_llama(kv_heads=2)
    before = state_copy(model)
    ok = {"model.layers.0.self_attn": [0, 1]}
    cases = [({"model.layers.1.self_attn": [4]}, ValueError, "out of range"),
             ({"model.layers.1.self_attn": [0, 1, 2, 3]}, ValueError, "all 4 heads"),
             ({"model.layers.1.self_attn": [0, 0]}, ValueError, "repeats"),
             ({"model.layers.1.self_attn": [1.0]}, TypeError, "must be ints"),
             ({"model.layers.1.self_attn": [1, 2]}, ValueError, "whole groups"),
             ({"model.layers.1.mlp": [0]}, TypeError, "not a supported attention module"),
             ({"model.nope": [0]}, ValueError, "no module named"),
             ({"model.layers.1.self_attn": 3}, TypeError, "list of head indices")]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            prune_heads(model, {**ok, **bad})
        assert_state_unchanged(model, before)
    with pytest.raises(TypeError, match="heads must be a dict"):
        prune_heads(model, [0, 1])
    model.model.layers[0].self_attn.q_proj = nn.Sequential(model.model.layers[0].self_attn.q_proj)
    with pytest.raises(TypeError, match="before swapping layers"):
        prune_heads(model, ok)


def test_importance_and_selection_reject_bad_input():
    model = tiny_llama()
    with pytest.raises(ValueError, match="method"):
        head_importance(model, method="taylor")
    with pytest.raises(ValueError, match="needs batches and loss_fn"):
        head_importance(model)
    with pytest.raises(TypeError, match="scalar"):
        head_importance(model, [token_ids()], lambda m, b: m(b).logits)
    with pytest.raises(ValueError, match="empty"):
        head_importance(model, [], lm_loss)
    with pytest.raises(ValueError, match="no supported attention"):
        head_importance(nn.Linear(3, 3), method="weight_norm")
    before = state_copy(model)
    scores = head_importance(model, method="weight_norm")
    for kwargs, message in [({"amount": 1.0}, "amount"), ({"amount": 0.2, "scope": "model"}, "scope"),
                            ({"amount": 0.2, "min_heads": 0}, "min_heads")]:
        with pytest.raises(ValueError, match=message):
            prune_heads_by_importance(model, scores, **kwargs)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        prune_heads_by_importance(model, {"model.layers.0.self_attn": torch.ones(3)}, 0.2)
    with pytest.raises(ValueError, match="inf or nan"):
        prune_heads_by_importance(model, {"model.layers.0.self_attn": torch.tensor([1, float("nan"), 1, 1])}, 0.2)
    assert_state_unchanged(model, before)
