"""Unstructured pruning: magnitude (layer/global), masks held through training, gradual schedule,
Wanda, Taylor, SparseGPT, and finishing into sparseinfer's sparse layers."""
import math

import pytest
import torch
from torch import nn

from sparseinfer import CSRLinear, Sparse24, Sparse24Linear
from sparseinfer.compress.magnitude import magnitude_masks, prune_magnitude
from sparseinfer.compress.masks import PruningMasks
from sparseinfer.compress.schedule import GradualPruner
from sparseinfer.compress.scores import masks_from_scores
from sparseinfer.compress.sparsegpt import prune_sparsegpt, sparsegpt_layer
from sparseinfer.compress.taylor import taylor_scores
from sparseinfer.compress.wanda import input_norms, prune_wanda, wanda_scores


def mlp(widths=(20, 48, 32, 5)):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def batches(n=4, rows=32, cols=20, scales=None):
    scales = torch.ones(cols) if scales is None else scales
    return [torch.randn(rows, cols) * scales for _ in range(n)]


def linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_layer_magnitude_prunes_the_smallest_exactly():
    model = mlp()
    weights = {n: m.weight.detach().clone() for n, m in linears(model).items()}
    masks = prune_magnitude(model, 0.7)
    for name, m in linears(model).items():
        w = weights[name]
        pruned = ~masks.masks[name]
        assert int(pruned.sum()) == math.floor(0.7 * w.numel())
        assert w.abs()[pruned].max() <= w.abs()[~pruned].min()
        assert torch.equal(m.weight.detach(), w * masks.masks[name])


def test_global_magnitude_uses_one_threshold():
    model = mlp()
    with torch.no_grad():
        model[0].weight.mul_(10)  # a loud layer: global pruning should spare it
    masks = magnitude_masks(model, 0.6, scope="global")
    weights = {n: m.weight.detach().abs() for n, m in linears(model).items()}
    pruned_max = max(float(w[~masks[n]].max()) for n, w in weights.items() if (~masks[n]).any())
    kept_min = min(float(w[masks[n]].min()) for n, w in weights.items())
    assert pruned_max <= kept_min
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == math.floor(0.6 * total)
    sparsities = {n: 1 - float(m.float().mean()) for n, m in masks.items()}
    assert sparsities["0"] < 0.1 < sparsities["2"]


def test_row_scope_and_n_m():
    scores = {"a": torch.rand(6, 16)}
    rows = masks_from_scores(scores, 0.25, scope="row")["a"]
    assert (rows.sum(1) == 12).all()
    n_m = masks_from_scores(scores, 0.0, n_m=(2, 4))["a"]
    assert (n_m.view(6, 4, 4).sum(-1) == 2).all()


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
])
def test_masks_hold_through_optimizer_steps(optimizer):
    model = mlp()
    opt = optimizer(model.parameters())
    # Momentum built up before pruning would revive pruned weights without the pre-forward hook.
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 20)).pow(2).mean().backward()
        opt.step()
    masks = prune_magnitude(model, 0.8)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 20)).pow(2).mean().backward()
        for name, m in linears(model).items():
            assert (m.weight.grad[~masks.masks[name]] == 0).all()
        opt.step()
        model(torch.randn(1, 20))
        for name, m in linears(model).items():
            assert (m.weight.detach()[~masks.masks[name]] == 0).all()
    masks.remove()
    opt.zero_grad()
    model(torch.randn(8, 20)).pow(2).mean().backward()
    assert (model[0].weight.grad[~masks.masks["0"]] != 0).any()  # hooks really gone


def test_finish_swaps_in_csr_layers_with_the_same_output():
    model = mlp((64, 128, 96, 10))
    masks = prune_magnitude(model, 0.8, filter=lambda name, m: name != "4")
    x = torch.randn(7, 64)
    expected = model(x)
    report = masks.finish("csr")
    assert isinstance(model[0], CSRLinear) and isinstance(model[2], CSRLinear)
    assert isinstance(model[4], nn.Linear)
    assert len(report.converted) == 2 and report.sparse_bytes < report.dense_bytes
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_finish_2_4():
    model = mlp((64, 128, 10))
    masks = prune_magnitude(model, 0.0, n_m=(2, 4))
    x = torch.randn(3, 64)
    expected = model(x)
    masks.finish("2:4")
    assert isinstance(model[0], Sparse24Linear) and isinstance(model[2], Sparse24Linear)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_cubic_schedule_matches_zhu_gupta():
    model = mlp()
    pruner = GradualPruner(model, final_sparsity=0.9, initial_sparsity=0.1, start_step=10, end_step=110,
                           frequency=10)
    assert pruner.sparsity_at(0) == 0.0
    assert pruner.sparsity_at(10) == pytest.approx(0.1)
    assert pruner.sparsity_at(60) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5 ** 3)
    assert pruner.sparsity_at(110) == pytest.approx(0.9) == pruner.sparsity_at(500)
    ramp = [pruner.sparsity_at(t) for t in range(10, 111)]
    assert all(a <= b for a, b in zip(ramp, ramp[1:]))


def test_gradual_pruning_in_a_training_loop():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = GradualPruner(model, final_sparsity=0.9, end_step=40, frequency=5)
    pruned_before = {n: torch.zeros_like(m.weight, dtype=torch.bool) for n, m in linears(model).items()}
    x, y = torch.randn(64, 20), torch.randn(64, 5)
    for step in range(50):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        pruner.step()
        for name, m in linears(model).items():
            pruned_now = m.weight.detach() == 0
            assert not (pruned_before[name] & ~pruned_now).any()  # never revived
            pruned_before[name] = pruned_now
        if step + 1 == 20:
            assert pruner.current_sparsity == pytest.approx(pruner.sparsity_at(20))
    assert pruner.masks.sparsity()["total"] == pytest.approx(0.9, abs=0.01)
    report = pruner.finish("csr")
    assert len(report.converted) == 3


def test_wanda_scores_and_row_pruning():
    model = mlp()
    scales = torch.linspace(0.05, 4.0, 20)
    data = batches(scales=scales)
    x = torch.cat(data)
    scores = wanda_scores(model, data)
    torch.testing.assert_close(input_norms(model, data)["0"], x.norm(dim=0))
    torch.testing.assert_close(scores["0"], model[0].weight.detach().abs() * x.norm(dim=0))
    w0 = model[0].weight.detach().clone()
    masks = prune_wanda(model, data, 0.5)
    assert ((~masks.masks["0"]).sum(1) == 10).all()
    # Against magnitude on the first layer (exact activations): a smaller output error.
    mag_mask = masks_from_scores({"0": w0.abs()}, 0.5, scope="row")["0"]
    err = lambda w: float((x @ w.t() - x @ w0.t()).norm())
    assert err(model[0].weight.detach()) < 0.7 * err(w0 * mag_mask)


def test_wanda_follows_conv1d_orientation():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D
    conv = Conv1D(6, 16)  # weight [in=16, out=6]
    model = nn.Sequential(conv)
    data = batches(cols=16, scales=torch.linspace(0.1, 3, 16))
    masks = prune_wanda(model, data, 0.5)
    assert masks.masks["0"].shape == (16, 6)
    assert ((~masks.masks["0"]).sum(0) == 8).all()  # per output column of the [in, out] weight


def test_n_m_wanda():
    model = mlp((32, 16, 4))
    masks = prune_wanda(model, batches(cols=32), n_m=(2, 4))
    assert Sparse24.first_violation(model[0].weight.detach()) is None
    masks.finish("2:4")
    assert isinstance(model[0], Sparse24Linear)


def test_taylor_scores_equal_accumulated_w_times_grad():
    model = mlp()
    data = [(torch.randn(16, 20), torch.randn(16, 5)) for _ in range(3)]
    loss_fn = lambda m, batch: nn.functional.mse_loss(m(batch[0]), batch[1])
    scores = taylor_scores(model, data, loss_fn)
    expected = torch.zeros_like(model[2].weight)
    for batch in data:
        model.zero_grad()
        loss_fn(model, batch).backward()
        expected += (model[2].weight * model[2].weight.grad).abs()
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(scores["2"], expected.detach())
    taylor_scores(model, data, loss_fn)
    assert model[0].weight.grad is None


def test_sparsegpt_beats_wanda_on_correlated_inputs():
    torch.manual_seed(1)
    mix = torch.randn(8, 32)
    data = [torch.randn(64, 8) @ mix + 0.05 * torch.randn(64, 32) for _ in range(4)]
    x = torch.cat(data)
    dense = nn.Sequential(nn.Linear(32, 24))
    w0 = dense[0].weight.detach().clone()
    wanda, sgpt = mlp((32, 24)), mlp((32, 24))
    wanda.load_state_dict(dense.state_dict()), sgpt.load_state_dict(dense.state_dict())
    prune_wanda(wanda, data, 0.5)
    masks = prune_sparsegpt(sgpt, data, 0.5)
    w = sgpt[0].weight.detach()
    assert int((w == 0).sum()) == w.numel() // 2
    assert torch.equal(w == 0, ~masks.masks["0"])
    err = lambda m: float((m[0](x) - x @ w0.t() - dense[0].bias).detach().norm())
    assert err(sgpt) < 0.5 * err(wanda)


def test_sparsegpt_n_m_and_exactness_without_pruning():
    w = torch.randn(8, 12)
    x = torch.randn(100, 12)
    h = 2 * x.double().t() @ x.double() / 100
    same, keep = sparsegpt_layer(w, h, 0.0)
    torch.testing.assert_close(same, w)
    assert keep.all()
    pruned, keep = sparsegpt_layer(w, h, 0.0, n_m=(2, 4), block_size=5)  # groups straddle blocks
    assert (keep.view(8, 3, 4).sum(-1) == 2).all() and torch.equal(pruned == 0, ~keep)


@pytest.mark.parametrize("call,error,match", [
    (lambda m: prune_magnitude(m, 1.0), ValueError, r"sparsity must be a number in \[0, 1\)"),
    (lambda m: prune_magnitude(m, 0.5, scope="block"), ValueError, "scope must be one of"),
    (lambda m: prune_magnitude(nn.ReLU(), 0.5), ValueError, "no Linear/Conv1D/Conv2d layers"),
    (lambda m: prune_magnitude("model", 0.5), TypeError, "nn.Module"),
    (lambda m: PruningMasks(m, {"0": torch.ones(3, 3, dtype=torch.bool)}), ValueError, "weight's shape"),
    (lambda m: PruningMasks(m, {"9": torch.ones(3, 3, dtype=torch.bool)}), ValueError, "no layer '9'"),
    (lambda m: prune_wanda(m, [], 0.5), ValueError, "no batches"),
    (lambda m: GradualPruner(m, 0.5, end_step=0), ValueError, "end_step > start_step"),
    (lambda m: GradualPruner(m, 0.5, end_step=10, initial_sparsity=0.6), ValueError, "exceeds"),
    (lambda m: prune_sparsegpt(m, batches(), n_m=(5, 4)), ValueError, "n_m must be"),
    (lambda m: taylor_scores(m, batches(), "loss"), TypeError, "loss_fn must be a callable"),
])
def test_bad_arguments_leave_the_model_alone(call, error, match):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        call(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class TwoHeads(nn.Module):
    """Two layers reading the very same tensor (like q/k/v), then one more."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(12, 8), nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.a(x)) * torch.relu(self.b(x)))


def test_execution_groups_follow_shared_inputs():
    from sparseinfer.compress.calibration import execution_groups
    model = TwoHeads()
    layers = {"out": model.out, "a": model.a, "b": model.b}
    assert execution_groups(model, layers, torch.randn(4, 12)) == [["a", "b"], ["out"]]


def test_sequential_wanda_scores_later_layers_on_pruned_activations():
    model = mlp((20, 16, 5))
    scales = torch.linspace(0.1, 3.0, 20)
    data = batches(scales=scales)
    x = torch.cat(data)
    w0, b0, w2 = model[0].weight.detach().clone(), model[0].bias.detach(), model[2].weight.detach().clone()
    masks = prune_wanda(model, data, 0.5, sequential=True)
    mask0 = masks_from_scores({"0": w0.abs() * x.norm(dim=0)}, 0.5, scope="row")["0"]
    hidden = torch.relu(x @ (w0 * mask0).t() + b0)  # what layer 2 sees after layer 0 is pruned
    mask2 = masks_from_scores({"2": w2.abs() * hidden.norm(dim=0)}, 0.5, scope="row")["2"]
    assert torch.equal(masks.masks["0"], mask0) and torch.equal(masks.masks["2"], mask2)
    one_pass = masks_from_scores({"2": w2.abs() * torch.relu(x @ w0.t() + b0).norm(dim=0)}, 0.5, scope="row")["2"]
    assert not torch.equal(mask2, one_pass)  # the test really tells the two procedures apart


def test_sequential_sparsegpt_runs_group_by_group():
    model = TwoHeads()
    data = batches(cols=12)
    masks = prune_sparsegpt(model, data, 0.5, sequential=True)
    for name in ("a", "b", "out"):
        weight = getattr(model, name).weight.detach()
        assert int((weight == 0).sum()) == weight.numel() // 2
        assert torch.equal(weight == 0, ~masks.masks[name])
    with pytest.raises(ValueError, match="cannot be sequential"):
        prune_wanda(mlp(), batches(), 0.5, scope="global", sequential=True)
