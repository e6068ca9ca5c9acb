"""Sparse24Linear and sparsify(model, format="2:4")."""
import io

import pytest
import torch
from torch import nn

from sparseinfer import Sparse24Linear, sparsify
from sparseinfer.compress import prune_2_4
from tolerances import assert_linear_close


def _linear_2_4(in_f, out_f, bias=True):
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(prune_2_4(lin.weight))
    return lin


def test_from_linear_matches(isa):
    lin = _linear_2_4(100, 50)
    layer = Sparse24Linear.from_linear(lin)
    x = torch.randn(3, 7, 100)
    with torch.no_grad():
        assert_linear_close(layer(x).reshape(-1, 50), x.reshape(-1, 100), lin.weight, lin.bias)
    assert layer(x[:, ::2].transpose(0, 1)).shape == (4, 3, 50)
    assert "sparsity=0.500" in repr(layer) and "in_features=100" in repr(layer)


def test_from_linear_prune():
    lin = nn.Linear(64, 16)
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 0, columns 0..3 .* Pass prune=True"):
        Sparse24Linear.from_linear(lin)
    layer = Sparse24Linear.from_linear(lin, prune=True)
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = nn.functional.linear(x, prune_2_4(lin.weight), lin.bias)
        assert_linear_close(layer(x), x, prune_2_4(lin.weight), lin.bias)
    assert layer(x).shape == expected.shape
    assert torch.count_nonzero(lin.weight) == 64 * 16  # the source layer is left untouched


def test_state_dict_is_compressed_tensors_layout():
    layer = Sparse24Linear.from_linear(_linear_2_4(300, 70))
    state = layer.state_dict()
    assert set(state) == {"bias", "shape", "compressed", "bitmask"}
    assert state["shape"].tolist() == [[70], [300]]
    assert state["compressed"].shape == (70, 150) and state["bitmask"].shape == (70, 38)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = Sparse24Linear(300, 70)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(5, 300)
    assert torch.equal(fresh(x), layer(x))


def test_state_dict_errors():
    state = Sparse24Linear.from_linear(_linear_2_4(20, 12)).state_dict()
    with pytest.raises(RuntimeError, match=r"shape \(12, 20\) does not match \(12, 24\)"):
        Sparse24Linear(24, 12).load_state_dict(state)
    bad = dict(state)
    bad["bitmask"] = state["bitmask"].clone()
    bad["bitmask"][:, 0] = 0xFF
    with pytest.raises(RuntimeError, match="bits set; 2:4 needs exactly 2"):
        Sparse24Linear(20, 12).load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "compressed"}
    with pytest.raises(RuntimeError, match="compressed"):
        Sparse24Linear(20, 12).load_state_dict(missing)


def test_module_dtype_cast_follows_buffers():
    layer = Sparse24Linear.from_linear(_linear_2_4(40, 8)).to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16
    layer.weight.validate()
    x = torch.randn(2, 40, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


def test_sparsify_2_4():
    net = nn.Sequential(_linear_2_4(64, 128), nn.ReLU(), nn.Linear(128, 128), _linear_2_4(128, 10, bias=False))
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = net(x)
    report = sparsify(net, format="2:4")
    assert isinstance(net[0], Sparse24Linear) and isinstance(net[3], Sparse24Linear)
    assert type(net[2]) is nn.Linear
    torch.testing.assert_close(net(x), expected)
    reasons = {l.name: (l.converted, l.reason) for l in report.layers}
    assert reasons["2"][0] is False and reasons["2"][1].startswith("not 2:4: row 0, columns 0..3")
    assert report.sparse_bytes < report.dense_bytes and report.format == "2:4"
