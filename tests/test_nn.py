"""CSRLinear and sparsify(model). The contract every layer keeps (from_linear, state_dict round trip
and errors, dtype casts) is in test_layer_contract.py."""
import pytest
import torch
from torch import nn

from sparseinfer import CSRLinear, sparsify


def _pruned_linear(in_f, out_f, sparsity, bias=True):
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < sparsity] = 0
    return lin


def test_state_dict_rejects_corrupt_arrays():
    layer = CSRLinear.from_linear(_pruned_linear(20, 10, 0.5))
    state = layer.state_dict()
    bad = dict(state)
    bad["row_offsets"] = bad["row_offsets"] + 1
    with pytest.raises(RuntimeError, match="row_offsets"):
        CSRLinear(20, 10).load_state_dict(bad)
    bad = dict(state, bitmask=state["bitmask"] ^ 1)
    with pytest.raises(RuntimeError, match="compressed"):
        CSRLinear(20, 10).load_state_dict(bad)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = _pruned_linear(64, 128, 0.9)
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(_pruned_linear(128, 128, 0.2), _pruned_linear(128, 128, 0.7))
        self.head = _pruned_linear(128, 10, 0.95, bias=False)

    def forward(self, x):
        return self.head(self.blocks(self.act(self.up(x))))


def test_sparsify_swaps_in_place():
    net = _Net()
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = net(x)
    report = sparsify(net, min_sparsity=0.5, filter=lambda name, m: name != "head")
    assert isinstance(net.up, CSRLinear) and isinstance(net.blocks[1], CSRLinear)
    assert type(net.blocks[0]) is nn.Linear and type(net.head) is nn.Linear
    torch.testing.assert_close(net(x), expected)
    reasons = {l.name: (l.converted, l.reason) for l in report.layers}
    assert reasons["blocks.0"] == (False, "sparsity below 0.5")
    assert reasons["head"] == (False, "excluded by filter")
    assert report.sparse_bytes < report.dense_bytes
    assert "2/4 Linear layers" in str(report)


def test_sparsify_errors():
    with pytest.raises(ValueError, match="unknown format"):
        sparsify(_Net(), format="blocked")
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(_Net(), min_sparsity=1.5)
    with pytest.raises(ValueError, match="from_linear"):
        sparsify(nn.Linear(4, 4))
    net = nn.Sequential(nn.Linear(8, 8).double())
    with torch.no_grad():
        net[0].weight.zero_()
    assert "not supported" in sparsify(net).layers[0].reason
