"""CSRLinear and sparsify(model)."""
import io

import pytest
import torch
from torch import nn

import sparseinfer
from sparseinfer import CSRLinear, sparsify
from conftest import random_sparse
from tolerances import assert_linear_close


def _pruned_linear(in_f, out_f, sparsity, bias=True):
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < sparsity] = 0
    return lin


def test_from_linear_matches(isa):
    lin = _pruned_linear(100, 50, 0.8)
    layer = CSRLinear.from_linear(lin)
    x = torch.randn(3, 7, 100)
    with torch.no_grad():
        assert_linear_close(layer(x).reshape(-1, 50), x.reshape(-1, 100), lin.weight, lin.bias)
    assert layer(x[:, ::2].transpose(0, 1)).shape == (4, 3, 50)  # non-contiguous input is fine
    assert f"sparsity={layer.sparsity:.3f}" in repr(layer) and "in_features=100" in repr(layer)


def test_state_dict_round_trip():
    lin = _pruned_linear(300, 70, 0.7)
    layer = CSRLinear.from_linear(lin)
    state = layer.state_dict()
    assert set(state) == {"bias", "shape", "compressed", "bitmask", "row_offsets"}  # sparse-bitmask
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = CSRLinear(300, 70)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(5, 300)
    assert torch.equal(fresh(x), layer(x))
    assert fresh.weight.nnz == layer.weight.nnz


def test_state_dict_errors():
    layer = CSRLinear.from_linear(_pruned_linear(20, 10, 0.5))
    state = layer.state_dict()
    with pytest.raises(RuntimeError, match="shape"):
        CSRLinear(21, 10).load_state_dict(state)
    bad = dict(state)
    bad["row_offsets"] = bad["row_offsets"] + 1
    with pytest.raises(RuntimeError, match="row_offsets"):
        CSRLinear(20, 10).load_state_dict(bad)
    bad = dict(state, bitmask=state["bitmask"] ^ 1)
    with pytest.raises(RuntimeError, match="compressed"):
        CSRLinear(20, 10).load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "compressed"}
    with pytest.raises(RuntimeError, match="compressed"):
        CSRLinear(20, 10).load_state_dict(missing)


def test_module_dtype_cast_follows_buffers():
    layer = CSRLinear.from_linear(_pruned_linear(40, 8, 0.5)).to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16
    x = torch.randn(2, 40, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


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
