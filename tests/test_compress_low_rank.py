"""Truncated-SVD low-rank factorisation of Linear layers."""
import math

import pytest
import torch
from torch import nn

from sparseinfer.compress.low_rank import (LowRankReport, choose_rank, factorize_linear, low_rank,
                                           plan_factorization)


def matrix_with_spectrum(sigma, out_features, in_features, dtype=torch.float64):
    """A random [out, in] matrix whose singular values are exactly `sigma` (orthonormal U, V by QR)."""
    k = len(sigma)
    u, _ = torch.linalg.qr(torch.randn(out_features, k, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_features, k, dtype=torch.float64))
    return (u * torch.tensor(sigma, dtype=torch.float64)) @ v.T


def linear_from(weight, bias=True):
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_full_rank_reproduces_the_layer():
    # rank min(in, out) is never smaller than dense (refused, see below), so take a rank-3 weight:
    # factorised at its full rank 3 it must be reproduced exactly.
    weight = matrix_with_spectrum([5.0, 3.0, 1.0], 32, 24, dtype=torch.float64)
    layer = linear_from(weight)
    factored = factorize_linear(layer, rank=3)
    x = torch.randn(7, 24, dtype=torch.float64)
    torch.testing.assert_close(factored(x), layer(x), rtol=1e-10, atol=1e-10)
    layer32 = linear_from(weight.float())
    torch.testing.assert_close(factorize_linear(layer32, rank=3)(x.float()), layer32(x.float()),
                               rtol=1e-5, atol=1e-5)


def test_structure_and_split_of_singular_values():
    layer = nn.Linear(30, 20)
    factored = factorize_linear(layer, rank=4)
    down, up = factored
    assert isinstance(factored, nn.Sequential) and type(down) is nn.Linear and type(up) is nn.Linear
    assert down.weight.shape == (4, 30) and down.bias is None
    assert up.weight.shape == (20, 4) and torch.equal(up.bias, layer.bias)
    sigma = torch.linalg.svdvals(layer.weight.detach())[:4]
    # sqrt(S) on both sides: each factor's row/column norms are sqrt(sigma_i)
    torch.testing.assert_close(down.weight.norm(dim=1), sigma.sqrt(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(up.weight.norm(dim=0), sigma.sqrt(), rtol=1e-5, atol=1e-6)
    assert not layer.weight.grad_fn and layer.weight.shape == (20, 30)  # original untouched


@pytest.mark.parametrize("rank", [1, 2, 5, 9])
def test_error_equals_the_eckart_young_bound(rank):
    sigma = [10.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.1]
    weight = matrix_with_spectrum(sigma, 48, 40)
    layer = linear_from(weight, bias=False)
    plan = plan_factorization(layer, rank=rank)
    down, up = plan.module
    measured = torch.linalg.matrix_norm(weight - up.weight @ down.weight)
    bound = math.sqrt(sum(s * s for s in sigma[rank:]))
    assert measured.item() == pytest.approx(bound, rel=1e-9)
    assert plan.relative_error == pytest.approx(bound / math.sqrt(sum(s * s for s in sigma)), rel=1e-9)


def test_energy_chooses_the_documented_rank():
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0])  # sigma^2 = 16, 4, 1, 1 of 22
    # cumulative fractions: 0.727, 0.909, 0.955, 1.0
    assert choose_rank(sigma, 10, 8, energy=0.5) == 1
    assert choose_rank(sigma, 10, 8, energy=0.72) == 1
    assert choose_rank(sigma, 10, 8, energy=0.73) == 2
    assert choose_rank(sigma, 10, 8, energy=0.95) == 3
    assert choose_rank(sigma, 10, 8, energy=1.0) == 4
    assert choose_rank(torch.tensor([3.0, 0.0, 0.0]), 3, 3, energy=1.0) == 1
    # through a real matrix with that spectrum
    layer = linear_from(matrix_with_spectrum([4.0, 2.0, 1.0, 1.0], 30, 40).float())
    assert plan_factorization(layer, energy=0.9).rank == 2


def test_param_budget_chooses_the_documented_rank():
    sigma = torch.linspace(10, 1, 20)
    # 20 x 30 layer: each rank costs 50 weights of the dense 600
    assert choose_rank(sigma, 30, 20, param_budget=0.5) == 6       # floor(300 / 50)
    assert choose_rank(sigma, 30, 20, param_budget=0.25) == 3      # floor(150 / 50)
    assert choose_rank(sigma, 30, 20, param_budget=149) == 2
    assert choose_rank(sigma, 30, 20, param_budget=150) == 3
    assert choose_rank(sigma, 30, 20, param_budget=49) == 0        # not even rank 1 fits
    assert choose_rank(sigma, 30, 20, param_budget=10_000) == 20   # capped at min(in, out)
    assert choose_rank(sigma, 30, 20, param_budget=1.0) == 12


def test_model_still_runs_and_parameters_drop():
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 3))
    x = torch.randn(5, 64)
    before = sum(p.numel() for p in model.parameters())
    report = low_rank(model, rank=8)
    assert isinstance(report, LowRankReport)
    assert [l.name for l in report.factorized] == ["0", "2"]
    assert [l.name for l in report.skipped] == ["4"] and "not fewer" in report.skipped[0].reason
    assert isinstance(model[0], nn.Sequential) and type(model[4]) is nn.Linear
    after = sum(p.numel() for p in model.parameters())
    assert after == report.params_after < before == report.params_before
    assert report.factorized[0].params_after == 8 * (64 + 48) + 48
    assert model(x).shape == (5, 3)
    text = str(report)
    assert "factorized" in text and f"{before} -> {after}" in text


def test_energy_near_one_finds_the_true_rank():
    # Low-rank weights keep their output when (almost) all energy is kept: the rank found is the
    # true rank (energy=1.0 exactly would also keep float32 rounding noise in the tail).
    model = nn.Sequential(linear_from(matrix_with_spectrum([3.0, 2.0, 1.0], 40, 32).float()),
                          nn.Tanh(), linear_from(matrix_with_spectrum([2.0, 1.0], 16, 40).float()))
    x = torch.randn(6, 32)
    expected = model(x).detach()
    report = low_rank(model, energy=1.0 - 1e-9)
    assert [l.rank for l in report.factorized] == [3, 2]
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_filter_and_tied_weights_are_skipped():
    embed = nn.Embedding(50, 32)
    head = nn.Linear(32, 50, bias=False)
    head.weight = embed.weight
    model = nn.ModuleDict({"embed": embed, "body": nn.Linear(32, 32), "other": nn.Linear(32, 32),
                           "head": head})
    report = low_rank(model, rank=2, filter=lambda name, m: name != "other")
    reasons = {l.name: l.reason for l in report.skipped}
    assert reasons == {"other": "excluded by filter", "head": "weight is shared (tied) with another module"}
    assert isinstance(model["body"], nn.Sequential) and model["head"] is head


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtype_and_device_are_preserved(dtype):
    layer = nn.Linear(40, 24).to(dtype)
    factored = factorize_linear(layer, rank=5)
    for p in factored.parameters():
        assert p.dtype == dtype and p.device == layer.weight.device


def test_hf_conv1d_matches_an_independent_truncated_svd():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).eval()
    conv = model.transformer.h[0].mlp.c_fc  # Conv1D with weight [in=32, out=128]
    weight = conv.weight.detach().t().double()  # [out, in]
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    expected_weight = (u[:, :6] * s[:6]) @ vh[:6]
    x = torch.randn(3, 32)
    factored = factorize_linear(conv, rank=6)
    expected = x.double() @ expected_weight.T + conv.bias.detach().double()
    torch.testing.assert_close(factored(x).double(), expected, rtol=1e-4, atol=1e-5)

    ids = torch.randint(0, 64, (2, 10))
    before = sum(p.numel() for p in model.parameters())
    report = low_rank(model, rank=4)
    assert {l.name for l in report.factorized} == {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                                   "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}
    assert [l.name for l in report.skipped] == ["lm_head"]  # tied to the token embedding
    assert report.factorized[0].shape == (96, 32)
    assert sum(p.numel() for p in model.parameters()) < before
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 10, 64) and torch.isfinite(logits).all()


def test_refuses_when_not_smaller():
    layer = nn.Linear(10, 10)
    assert factorize_linear(layer, rank=5) is None  # 5 * 20 = 100, not fewer than 100
    plan = plan_factorization(layer, rank=5)
    assert plan.module is None and "not fewer" in plan.reason and plan.params_after == plan.params_before
    assert factorize_linear(layer, rank=4) is not None
    assert factorize_linear(layer, rank=99) is None  # capped at full rank, never smaller
    assert "below one rank" in plan_factorization(layer, param_budget=19).reason
    model = nn.Sequential(nn.Linear(8, 8))
    report = low_rank(model, energy=1.0)
    assert report.factorized == [] and type(model[0]) is nn.Linear


def test_bad_arguments():
    layer = nn.Linear(8, 6)
    sigma = torch.tensor([3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="exactly one of rank, energy, param_budget"):
        factorize_linear(layer)
    with pytest.raises(ValueError, match="exactly one of rank, energy, param_budget"):
        factorize_linear(layer, rank=2, energy=0.9)
    with pytest.raises(ValueError, match="rank must be a positive int"):
        factorize_linear(layer, rank=0)
    with pytest.raises(ValueError, match="energy must be a number in"):
        factorize_linear(layer, energy=1.5)
    with pytest.raises(ValueError, match="param_budget as a float"):
        factorize_linear(layer, param_budget=1.5)
    with pytest.raises(ValueError, match="param_budget as an int"):
        choose_rank(sigma, 8, 6, param_budget=0)
    with pytest.raises(ValueError, match="param_budget must be"):
        choose_rank(sigma, 8, 6, param_budget=True)
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        factorize_linear(nn.Conv2d(3, 3, 3), rank=1)
    with pytest.raises(ValueError, match="descending"):
        choose_rank(torch.tensor([1.0, 2.0]), 8, 6, energy=0.5)
    with pytest.raises(ValueError, match="descending"):
        choose_rank(torch.tensor([1.0, -1.0]), 8, 6, energy=0.5)
    with pytest.raises(ValueError, match="singular_values must be"):
        choose_rank(torch.ones(2, 2), 8, 6, energy=0.5)
    with pytest.raises(ValueError, match="at most 2"):
        choose_rank(sigma, 2, 6, energy=0.5)
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        choose_rank(sigma, 0, 6, energy=0.5)
    with pytest.raises(ValueError, match="exactly one of energy, param_budget"):
        choose_rank(sigma, 8, 6)

    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    originals = list(model)
    for kwargs, error, match in [({"rank": -1}, ValueError, "rank must be"),
                                 ({"energy": 0.0}, ValueError, "energy must be"),
                                 ({"param_budget": 100}, ValueError, "float fraction"),
                                 ({"rank": 2, "energy": 0.5}, ValueError, "exactly one"),
                                 ({"rank": 2, "filter": "x"}, TypeError, "filter must be")]:
        with pytest.raises(error, match=match):
            low_rank(model, **kwargs)
        assert list(model) == originals  # nothing was replaced
    with pytest.raises(ValueError, match="use factorize_linear"):
        low_rank(nn.Linear(4, 4), rank=1)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        low_rank("model", rank=1)
