"""Sparse24Linear and sparsify(model, format="2:4"). The contract every layer keeps (from_linear,
state_dict round trip and errors, dtype casts) is in test_layer_contract.py."""
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
    state = Sparse24Linear.from_linear(_linear_2_4(300, 70)).state_dict()
    assert state["shape"].tolist() == [[70], [300]]
    assert state["compressed"].shape == (70, 150) and state["bitmask"].shape == (70, 38)


def test_state_dict_rejects_bad_2_4_bitmask():
    state = Sparse24Linear.from_linear(_linear_2_4(20, 12)).state_dict()
    bad = dict(state)
    bad["bitmask"] = state["bitmask"].clone()
    bad["bitmask"][:, 0] = 0xFF
    with pytest.raises(RuntimeError, match="bits set; 2:4 needs exactly 2"):
        Sparse24Linear(20, 12).load_state_dict(bad)


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
