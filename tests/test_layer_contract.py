"""The contract every layer keeps (CSRLinear, Sparse24Linear, Int8Linear: the registry's layer
classes), run for every registered format from the one table of op cases (op_cases.py):
from_linear, the state_dict (its layout, a round trip through torch.save, errors) and dtype casts."""
import io
import re

import pytest
import torch

from op_cases import case_params, variant_params


@pytest.mark.parametrize("case,variant", variant_params())
def test_from_linear_matches(isa, case, variant):
    lin = case.linear(100, 50)
    layer = case.spec.layer_cls.from_linear(lin, **variant)
    source = case.spec.format_cls.from_dense(lin.weight.detach(), **case.pack_options(variant))
    x = torch.randn(3, 7, 100)
    with torch.no_grad():
        case.check(layer(x).reshape(-1, 50), x.reshape(-1, 100), source, lin.bias,
                   **case.op_options(variant))
    assert layer(x[:, ::2].transpose(0, 1)).shape == (4, 3, 50)  # non-contiguous input is fine
    assert "in_features=100" in repr(layer)
    for fragment in case.repr_fragments(layer):
        assert fragment in repr(layer)


@pytest.mark.parametrize("case,variant", variant_params())
def test_state_dict_round_trip(case, variant):
    layer = case.spec.layer_cls.from_linear(case.linear(300, 70), **variant)
    state = layer.state_dict()
    assert set(state) == {"bias"} | case.state_keys == {"bias", *case.spec.layer_cls.state_keys()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = case.spec.layer_cls(300, 70, **variant)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(5, 300)
    assert torch.equal(fresh(x), layer(x))
    assert fresh.weight.nnz == layer.weight.nnz


@pytest.mark.parametrize("case", case_params())
def test_state_dict_errors(case):
    state = case.spec.layer_cls.from_linear(case.linear(20, 12)).state_dict()
    with pytest.raises(RuntimeError, match=r"shape \(12, 20\) does not match \(12, 24\)"):
        case.spec.layer_cls(24, 12).load_state_dict(state)
    for key in case.spec.layer_cls.state_keys():
        missing = {k: v for k, v in state.items() if k != key}
        with pytest.raises(RuntimeError, match=re.escape(f'"{key}"')):
            case.spec.layer_cls(20, 12).load_state_dict(missing)


@pytest.mark.parametrize("case,variant", variant_params())
def test_module_dtype_cast_follows_buffers(case, variant):
    layer = case.spec.layer_cls.from_linear(case.linear(40, 8), **variant).to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    layer.weight.validate()
    x = torch.randn(2, 40, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
