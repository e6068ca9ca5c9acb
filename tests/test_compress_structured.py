"""Structured channel pruning: the shrunken model must equal the original with the removed channels
zeroed at the consumers' inputs (independent plain-torch oracle via forward pre-hooks)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseinfer.compress.structured import channel_importance, prune_channels, slimming_penalty

TOL = dict(rtol=1e-5, atol=1e-5)


def mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))


def randomize_batchnorm(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model


def cnn():  # digits-shaped: 1x8x8 -> 10 classes
    return randomize_batchnorm(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.conv2(F.relu(self.bn1(self.conv1(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1))


class FunctionalCNN(nn.Module):  # functional ops, view(N, -1), a dropout, a BatchNorm1d after the flatten
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm1d(6 * 3 * 3)
        self.fc1 = nn.Linear(6 * 3 * 3, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x):
        x = F.max_pool2d(F.gelu(self.conv(x)), 2)
        x = self.bn(x.view(x.size(0), -1))
        x = F.dropout(torch.flatten(x, 1), 0.2, self.training) * 2.0
        return self.fc2(torch.tanh(self.fc1(x)))


def zeroed_output(model, x, zero):
    """Original model with input channels (dim 1) of consumer modules zeroed: {consumer: [columns]}."""
    def hook(columns):
        def pre(_module, args):
            out = args[0].clone()
            out[:, columns] = 0
            return (out,)
        return pre
    handles = [model.get_submodule(name).register_forward_pre_hook(hook(cols)) for name, cols in zero.items()]
    try:
        with torch.no_grad():
            return model.eval()(x)
    finally:
        for h in handles:
            h.remove()


def blocks(channels, size):  # columns of channels after flattening `size` features per channel
    return [c * size + i for c in channels for i in range(size)]


def removed(report):
    return {layer.name: list(layer.removed) for layer in report.layers}


def test_mlp_equals_original_with_removed_inputs_zeroed():
    model, x = mlp(), torch.randn(5, 64)
    pruned, report = prune_channels(model, 0.5, x)
    gone = removed(report)
    assert [len(gone[n]) for n in ("0", "2", "4")] == [16, 12, 0]
    assert "model output" in report.skipped["4"]
    assert (pruned[0].out_features, pruned[2].in_features, pruned[2].out_features, pruned[4].in_features) == (16, 16, 12, 12)
    expected = zeroed_output(model, x, {"2": gone["0"], "4": gone["2"]})
    torch.testing.assert_close(pruned.eval()(x), expected, **TOL)


@pytest.mark.parametrize("method", ["l1", "l2", "bn_scale"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_cnn_equals_original_with_removed_inputs_zeroed(method, scope):
    model, x = cnn(), torch.randn(4, 1, 8, 8)
    pruned, report = prune_channels(model, 0.5, x, method=method, scope=scope)
    gone = removed(report)
    expected = zeroed_output(model, x, {"4": gone["0"], "8": blocks(gone["4"], 16), "10": gone.get("8", [])})
    torch.testing.assert_close(pruned.eval()(x), expected, **TOL)
    assert pruned[1].num_features == pruned[0].out_channels == 8 - len(gone["0"])
    assert pruned[1].running_mean.numel() == pruned[1].running_var.numel() == pruned[1].bias.numel() == pruned[1].num_features
    assert pruned[8].in_features == 16 * pruned[4].out_channels
    if method == "bn_scale":  # the Linear layers have no BatchNorm after them
        assert "no BatchNorm" in report.skipped["8"]
        assert sum(map(len, gone.values())) == 12  # 50% of 8 + 16 conv channels
    else:
        assert len(gone["8"]) > 0


def test_residual_add_blocks_its_producers_and_rest_is_pruned():
    model, x = randomize_batchnorm(Residual()), torch.randn(3, 1, 8, 8)
    pruned, report = prune_channels(model, 0.5, x)
    skipped = report.skipped
    assert set(skipped) == {"stem", "conv2", "head"}
    assert "add" in skipped["stem"] and "add" in skipped["conv2"] and "model output" in skipped["head"]
    gone = removed(report)["conv1"]
    assert len(gone) == 6 and pruned.conv1.out_channels == pruned.bn1.num_features == pruned.conv2.in_channels == 6
    assert pruned.stem.out_channels == 8
    torch.testing.assert_close(pruned.eval()(x), zeroed_output(model, x, {"conv2": gone}), **TOL)
    assert "skipped" in str(report) and "conv1" in str(report)


def test_functional_ops_view_and_batchnorm_after_flatten():
    model, x = randomize_batchnorm(FunctionalCNN()), torch.randn(4, 1, 8, 8)
    pruned, report = prune_channels(model, 0.5, x)
    gone = removed(report)
    assert len(gone["conv"]) == 3 and len(gone["fc1"]) == 10 and pruned.bn.num_features == 27
    expected = zeroed_output(model, x, {"fc1": blocks(gone["conv"], 9), "fc2": gone["fc1"]})
    torch.testing.assert_close(pruned.eval()(x), expected, **TOL)


def test_l1_and_l2_pick_smallest_norm_filters():
    model, x = cnn(), torch.randn(2, 1, 8, 8)
    weight = model[4].weight.detach()
    for method, norms in (("l1", weight.abs().sum((1, 2, 3))), ("l2", weight.pow(2).sum((1, 2, 3)).sqrt())):
        torch.testing.assert_close(channel_importance(model, method)["4"], norms)
        _, report = prune_channels(model, 0.25, x, method=method)
        assert removed(report)["4"] == sorted(torch.argsort(norms)[:4].tolist())


def test_bn_scale_picks_smallest_gamma():
    model, x = cnn(), torch.randn(2, 1, 8, 8)
    gamma = torch.tensor([0.9, -0.01, 0.5, 0.02, -2.0, 0.03, 1.0, 0.7])
    with torch.no_grad():
        model[1].weight.copy_(gamma)
    scores = channel_importance(model, "bn_scale")
    assert set(scores) == {"0", "4"}
    torch.testing.assert_close(scores["0"], gamma.abs())
    pruned, report = prune_channels(model, 0.375, x, method="bn_scale")
    assert removed(report)["0"] == [1, 3, 5]
    torch.testing.assert_close(pruned[1].weight.detach(), gamma[[0, 2, 4, 6, 7]])


def test_parameter_count_drops_as_reported():
    model, x = cnn(), torch.randn(2, 1, 8, 8)
    pruned, report = prune_channels(model, 0.5, x)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert report.params_before == count(model) and report.params_after == count(pruned) < count(model)
    for layer in report.layers:
        assert layer.params_after == count(pruned.get_submodule(layer.name))
        assert layer.params_before == count(model.get_submodule(layer.name))
        assert layer.channels_after == layer.channels_before - len(layer.removed)


def test_global_scope_removes_amount_of_all_channels_and_respects_min_channels():
    model, x = mlp(), torch.randn(2, 64)
    with torch.no_grad():
        model[0].weight.mul_(100)  # layer 0 all important: global ranking takes layer 2's channels
    _, report = prune_channels(model, 0.5, x, scope="global", min_channels=3)
    gone = removed(report)
    assert len(gone["0"]) + len(gone["2"]) == 28  # half of 32 + 24
    assert len(gone["2"]) == 21 and len(gone["0"]) == 7


def test_exclude_keeps_a_layer_and_min_channels_floor():
    model, x = mlp(), torch.randn(2, 64)
    pruned, report = prune_channels(model, 0.9, x, exclude=["2"], min_channels=5)
    assert report.skipped["2"] == "excluded" and pruned[2].out_features == 24
    assert pruned[0].out_features == 5 and pruned[2].in_features == 5


def test_pruned_model_trains():
    model, x, y = cnn(), torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    pruned, _ = prune_channels(model, 0.5, x)
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    before = [p.detach().clone() for p in pruned.parameters()]
    loss = F.cross_entropy(pruned(x), y) + slimming_penalty(pruned, 1e-4)
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in pruned.parameters())
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, pruned.parameters()))


def test_amount_zero_is_identity_and_original_untouched():
    model, x = cnn().train(), torch.randn(4, 1, 8, 8)
    state = copy.deepcopy(model.state_dict())
    pruned, report = prune_channels(model, 0.0, x)
    assert report.params_after == report.params_before
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), state.values()))
    pruned, _ = prune_channels(model, 0.5, x, method="bn_scale")
    assert model.training and pruned.training and model[0].out_channels == 8
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # incl. BN running stats


def test_slimming_penalty_is_l1_of_gammas_and_backprops():
    model = cnn()
    penalty = slimming_penalty(model, 0.01)
    expected = 0.01 * (model[1].weight.abs().sum() + model[5].weight.abs().sum())
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    torch.testing.assert_close(model[1].weight.grad, 0.01 * model[1].weight.detach().sign())


def test_unprunable_structures_are_reported():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3, padding=1)
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.b = nn.Conv2d(4, 4, 1)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8 * 8 * 8, 3)

        def forward(self, x):
            x = self.dw(self.a(x))
            x = torch.cat([x, self.b(x)], 1)
            return self.head(self.norm(x).flatten(1))
    _, report = prune_channels(Branchy(), 0.5, torch.randn(2, 1, 8, 8))
    skipped = report.skipped
    assert "grouped" in skipped["a"] and "grouped" in skipped["dw"]
    assert "cat" in skipped["b"] and "model output" in skipped["head"]


def test_bad_inputs_raise_clear_errors():
    model, x = mlp(), torch.randn(2, 64)
    for amount in (-0.1, 1.0, "0.5", True):
        with pytest.raises(ValueError, match="amount"):
            prune_channels(model, amount, x)
    with pytest.raises(ValueError, match="method"):
        prune_channels(model, 0.5, x, method="l3")
    with pytest.raises(ValueError, match="method"):
        channel_importance(model, "taylor")
    with pytest.raises(ValueError, match="scope"):
        prune_channels(model, 0.5, x, scope="network")
    with pytest.raises(ValueError, match="min_channels"):
        prune_channels(model, 0.5, x, min_channels=0)
    with pytest.raises(ValueError, match="exclude"):
        prune_channels(model, 0.5, x, exclude=["nope"])
    with pytest.raises(TypeError, match="example_input"):
        prune_channels(model, 0.5, [1, 2])
    with pytest.raises(ValueError, match="example_input"):
        prune_channels(model, 0.5, torch.randn(2, 7))
    with pytest.raises(ValueError, match="bn_scale.*BatchNorm"):
        prune_channels(model, 0.5, x, method="bn_scale")
    with pytest.raises(ValueError, match="bn_scale.*BatchNorm"):
        channel_importance(model, "bn_scale")
    for call in (lambda: prune_channels("model", 0.5, x), lambda: channel_importance(None),
                 lambda: slimming_penalty(42, 0.1)):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
            call()
    with pytest.raises(ValueError, match="strength"):
        slimming_penalty(cnn(), -1.0)
    with pytest.raises(ValueError, match="BatchNorm"):
        slimming_penalty(model, 0.1)


def test_untraceable_model_raises():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)
    model = DataDependent()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="torch.fx"):
        prune_channels(model, 0.5, torch.randn(2, 4))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())



class Tricky(nn.Module):
    def __init__(self):
        super().__init__()
        self.fixed = nn.Conv2d(1, 4, 3, padding=1)  # view(-1, 256): channel count hard-coded
        self.reads = nn.Conv2d(1, 4, 3, padding=1)  # b.shape[1] read: depends on the channel count
        self.seq = nn.Linear(5, 4)  # [N, 7, 4].flatten(1): channels interleaved with positions
        self.ok = nn.Conv2d(1, 6, 3, padding=1)  # view(x.shape[0], -1) into fc: followed
        self.fc = nn.Linear(6 * 64, 3)
        self.shared = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x, s):
        a = self.fixed(x).view(-1, 256).sum(1)
        b = self.reads(x)
        b = b.reshape(b.shape[0], b.shape[1] * 64).sum(1)
        c = self.seq(s).flatten(1).sum(1)
        d = self.fc(F.relu(self.ok(x)).view(x.shape[0], -1))
        return self.shared(self.shared(d)) + (a + b + c)[:, None]


def test_reshapes_shape_reads_and_shared_layers_are_followed_or_reported():
    model, inputs = Tricky(), (torch.randn(2, 1, 8, 8), torch.randn(2, 7, 5))
    pruned, report = prune_channels(model, 0.5, inputs)
    skipped = report.skipped
    assert "fixed size" in skipped["fixed"] and "shape read" in skipped["reads"]
    assert "leading dimension" in skipped["seq"] and "not called" in skipped["unused"]
    assert "called 2 times" in skipped["shared"] and "called 2 times" in skipped["fc"]
    gone = removed(report)["ok"]
    assert "ok" not in skipped and len(gone) == 3 and pruned.fc.in_features == 3 * 64
    model.eval()
    handle = model.fc.register_forward_pre_hook(
        lambda _m, args: (args[0].index_fill(1, torch.tensor(blocks(gone, 64)), 0.0),))
    try:
        with torch.no_grad():
            expected = model(*inputs)
    finally:
        handle.remove()
    torch.testing.assert_close(pruned.eval()(*inputs), expected, **TOL)
