"""Joint pruning + int8 quantization (compress.joint): exact zeros, values on the int8 grid, N:M
patterns, SparseGPT's rounding inside the sweep against prune-then-round, gradual + KD + QAT."""
import copy

import pytest
import torch
from torch import nn

from sparseinfer import Int8, Int8Linear
from sparseinfer.compress import masks as masks_module
from sparseinfer.compress import prune_sparsegpt
from sparseinfer.compress.joint import (QuantizedWeight, fake_quantize_inputs, gradual_sparse_qat,
                                        sparsify_quantize)
from sparseinfer.compress.quant.weight_quant import dequantize_weight, quantize_weight, weight_observer, weight_scales
from sparseinfer.compress.sparsegpt import sparsegpt_layer


def correlated_inputs(n: int, features: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """Inputs whose features are strongly correlated (low rank plus noise), as in real layers."""
    return (torch.randn(n, rank, generator=generator) @ torch.randn(rank, features, generator=generator)
            + 0.3 * torch.randn(n, features, generator=generator))


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 8))


def calibration(seed: int = 1, batches: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(correlated_inputs(128 * batches, 64, 16, g).split(128))


def assert_int8_sparse(model: nn.Module, result, structure: str, sparsity: float) -> None:
    """Every recorded layer: q int8 in [-127, 127], the model weight == q * scale exactly, zeros
    (in q and in the weight) wherever the mask prunes, the pruned fraction as asked."""
    assert set(result.weights) == set(result.masks) and result.weights
    for name, qw in result.weights.items():
        weight = model.get_submodule(name).weight.detach()
        keep = result.masks[name]
        assert qw.q.dtype == torch.int8 and qw.q.shape == weight.shape == keep.shape
        assert int(qw.q.min()) >= -127 and int(qw.q.max()) <= 127
        groups = 1 if qw.group_size is None else -(-weight.shape[1] // qw.group_size)
        assert qw.scale.dtype == torch.float32 and qw.scale.shape == (weight.shape[0], groups)
        assert torch.equal(weight, qw.dequantize())
        assert torch.equal(weight, dequantize_weight(qw.q, qw.scale, qw.group_size))
        assert not bool(qw.q[~keep].any()) and not bool(weight[~keep].any())
        assert 1 - keep.float().mean().item() == pytest.approx(sparsity, abs=0.01)
        if structure == "2:4":
            assert int((qw.q != 0).view(weight.shape[0], -1, 4).sum(-1).max()) <= 2
            assert int(keep.view(weight.shape[0], -1, 4).sum(-1).max()) == 2


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
@pytest.mark.parametrize("structure, group_size", [("unstructured", None), ("2:4", None), ("unstructured", 32)])
def test_zeros_exact_and_values_on_the_int8_grid(method, structure, group_size):
    model = mlp()
    result = sparsify_quantize(model, calibration(), structure=structure, method=method, group_size=group_size)
    assert result.structure == structure and result.method == method
    assert_int8_sparse(model, result, structure, 0.5)
    assert result.sparsity()["total"] == pytest.approx(0.5, abs=0.01)


def test_other_sparsities_and_n_m_patterns():
    model = mlp()
    result = sparsify_quantize(model, calibration(), sparsity=0.7, method="sparsegpt")
    assert_int8_sparse(model, result, "unstructured", 0.7)
    model = mlp()
    result = sparsify_quantize(model, calibration(), structure="1:4", method="wanda")
    assert_int8_sparse(model, result, "1:4", 0.75)
    assert int((result.weights["0"].q != 0).view(96, -1, 4).sum(-1).max()) <= 1


def test_sequential_sparsegpt_and_filter():
    model = mlp()
    result = sparsify_quantize(model, calibration(), method="sparsegpt", sequential=True,
                               filter=lambda name, module: name != "4")
    assert set(result.weights) == {"0", "2"}
    assert_int8_sparse(model, result, "unstructured", 0.5)
    assert torch.equal(model[4].weight, mlp()[4].weight)  # excluded: untouched


def test_joint_sparsegpt_beats_prune_then_round():
    """One Linear with correlated inputs and one outlier weight per row (the outlier sets a coarse
    int8 step, as in real models). Prune-then-round: SparseGPT in float, then min/max int8 rounding
    of the result. Joint: the same mask, the rounding inside the sweep. Measured (seed 0): relative
    output error float 0.0389 / round 0.0433 / joint 0.0407 (unstructured), 0.0563 / 0.0587 / 0.0576
    (2:4): the joint sweep adds 40% / 56% of the error rounding adds."""
    g = torch.Generator().manual_seed(0)
    x = correlated_inputs(1024, 128, 32, g)
    dense = nn.Sequential(nn.Linear(128, 48, bias=False))
    with torch.no_grad():
        w = torch.randn(48, 128, generator=g)
        w[torch.arange(48), torch.randint(0, 128, (48,), generator=g)] *= 30
        dense[0].weight.copy_(w)
    y = x @ w.T

    def error(model):
        with torch.no_grad():
            return float((model(x) - y).norm() / y.norm())

    for structure, n_m in (("unstructured", None), ("2:4", (2, 4))):
        pruned = copy.deepcopy(dense)
        prune_sparsegpt(pruned, [x], 0.5, n_m=n_m).remove()
        rounded = copy.deepcopy(pruned)
        wf = pruned[0].weight.detach()
        scale = weight_scales(wf, None, weight_observer("minmax"))
        with torch.no_grad():
            rounded[0].weight.copy_(dequantize_weight(quantize_weight(wf, scale, None, 127), scale, None))
        joint = copy.deepcopy(dense)
        result = sparsify_quantize(joint, [x], structure=structure)
        assert torch.equal(result.masks["0"], pruned[0].weight != 0)  # the same pruning decision
        e_float, e_round, e_joint = error(pruned), error(rounded), error(joint)
        assert e_float < e_joint < e_round, (structure, e_float, e_joint, e_round)
        added_joint, added_round = e_joint ** 2 - e_float ** 2, e_round ** 2 - e_float ** 2
        assert added_joint < 0.75 * added_round, (structure, e_float, e_joint, e_round)


def test_sparsegpt_layer_fixed_mask():
    g = torch.Generator().manual_seed(3)
    x = correlated_inputs(256, 32, 8, g)
    h = 2 * x.double().T @ x.double() / 256
    w = torch.randn(16, 32, generator=g)
    mask = torch.rand(16, 32, generator=g) > 0.3
    pruned, keep = sparsegpt_layer(w, h, 0.5, mask=mask)
    assert torch.equal(keep, mask) and not bool(pruned[~mask].any())
    with pytest.raises(ValueError, match="mask must be"):
        sparsegpt_layer(w, h, 0.5, mask=mask.float())


@pytest.mark.parametrize("structure, format_name", [("unstructured", "CsrInt8"), ("2:4", "Sparse24Int8")])
def test_records_pack_exactly_into_the_sparse_int8_formats(structure, format_name):
    from sparseinfer.formats import sparse_int8
    model = mlp()
    result = sparsify_quantize(model, calibration(), structure=structure, group_size=32)
    for name, qw in result.weights.items():
        packed = getattr(sparse_int8, format_name).from_quantized(qw.q, qw.scale, qw.group_size, dtype=torch.float32)
        assert torch.equal(packed.to_dense().float(), model.get_submodule(name).weight.detach())


@pytest.mark.parametrize("structure, layer_name", [("unstructured", "CsrInt8Linear"), ("2:4", "Sparse24Int8Linear")])
def test_result_pack_swaps_in_the_recorded_int8_values(structure, layer_name):
    import sparseinfer
    from sparseinfer import reference
    model = mlp()
    result = sparsify_quantize(model, calibration(), structure=structure)
    simulated = copy.deepcopy(model)
    assert result.pack(model, act="dynamic") == ["0", "2", "4"]
    x = torch.randn(5, 64)
    for name, qw in result.weights.items():
        layer = model.get_submodule(name)
        assert type(layer) is getattr(sparseinfer, layer_name)
        assert torch.equal(layer.weight.qweight(), qw.q) and torch.equal(layer.weight.scale(), qw.scale)
        inputs = torch.randn(3, layer.in_features)
        assert torch.equal(layer(inputs), reference.sparse_int8_linear(inputs, layer.weight, layer.bias))
    assert torch.allclose(model(x), simulated(x), rtol=0.05, atol=0.05)  # W8A8 vs fp32 math on q * scale
    with pytest.raises(ValueError, match="act"):
        result.pack(mlp(), act="int4")


def test_w8a8_evaluation_matches_the_int8_kernel():
    """The q * scale weights plus per-token input rounding compute what Int8Linear(act="dynamic")
    built from the recorded q and scales computes."""
    model = mlp()
    result = sparsify_quantize(model, calibration(), structure="2:4", group_size=32)
    handles = fake_quantize_inputs(model, result.weights)
    x = calibration(seed=5, batches=1)[0]
    qw: QuantizedWeight = result.weights["0"]
    kernel = Int8Linear.from_weight(Int8.from_quantized(qw.q, qw.scale, qw.group_size, dtype=torch.float32),
                                    model[0].bias.detach(), act="dynamic")
    with torch.no_grad():
        simulated, native = model[0](x), kernel(x)
    torch.testing.assert_close(simulated, native, rtol=1e-4, atol=1e-4 * float(native.abs().max()))
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        assert not torch.equal(model[0](x), simulated)  # the hooks were what rounded the inputs


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(structure="3:2"), ValueError, "structure must be"),
    (dict(structure="2-4"), ValueError, "structure must be"),
    (dict(structure="2:4", sparsity=0.7), ValueError, "fixes sparsity"),
    (dict(sparsity=1.0), ValueError, "sparsity must be"),
    (dict(method="obs"), ValueError, "method must be"),
    (dict(group_size=48), ValueError, "group_size must be"),
    (dict(act="static"), ValueError, "act must be"),
    (dict(scope="row"), ValueError, "scope applies"),
    (dict(method="magnitude", sequential=True), ValueError, "sequential applies"),
    (dict(method="wanda", scope="everywhere"), ValueError, "scope must be"),
    (dict(damping=0.0), ValueError, "damping must be"),
    (dict(calibration=[]), ValueError, "no batches"),
    (dict(calibration=None), TypeError, "calibration must be"),
    (dict(filter="lm_head"), TypeError, "filter must be"),
])
def test_bad_arguments_raise(kwargs, error, match):
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    kwargs = {"calibration": calibration(), **kwargs}
    with pytest.raises(error, match=match):
        sparsify_quantize(model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def classification_data(teacher: nn.Module, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(steps):
        x = torch.randn(64, 64, generator=g)
        with torch.no_grad():
            batches.append((x, teacher(x).argmax(1)))
    return batches


def test_gradual_kd_qat_reaches_the_target_sparsity_with_int8_values(monkeypatch):
    teacher = mlp(seed=2).eval()
    student = copy.deepcopy(teacher)
    originals = {name: student.get_submodule(name) for name in ("0", "2", "4")}
    updates = []  # every re-pruning's masks: a weight once pruned must stay pruned
    update = masks_module.PruningMasks.update
    monkeypatch.setattr(masks_module.PruningMasks, "update",
                        lambda self, m: (updates.append({k: v.clone() for k, v in m.items()}), update(self, m))[1])
    loader = classification_data(teacher, 60)
    result = gradual_sparse_qat(student, teacher, loader, steps=60, sparsity=0.9, frequency=6, lr=2e-3, alpha=0.7)
    assert len(updates) >= 5
    for earlier, later in zip(updates, updates[1:]):
        for name in later:
            assert not bool((later[name] & ~earlier[name]).any()), name
    assert_int8_sparse(student, result, "unstructured", 0.9)
    assert result.sparsity()["total"] == pytest.approx(0.9, abs=0.005)
    for name, module in originals.items():  # the QAT layers went back to the original modules, no hooks
        assert student.get_submodule(name) is module and type(module) is nn.Linear
        assert not module._forward_pre_hooks and not module.weight._backward_hooks
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        agreement = (student(x).argmax(1) == teacher(x).argmax(1)).float().mean().item()
    assert agreement > 0.5  # distillation kept a 90%-sparse int8 student close to its teacher (8 classes)


def test_gradual_bad_arguments():
    teacher = mlp(seed=2)
    loader = classification_data(teacher, 4)
    with pytest.raises(ValueError, match="prune_steps"):
        gradual_sparse_qat(mlp(), teacher, loader, steps=10, prune_steps=10)
    with pytest.raises(ValueError, match="steps must be"):
        gradual_sparse_qat(mlp(), teacher, loader, steps=0)
    with pytest.raises(ValueError, match="sparsity must be"):
        gradual_sparse_qat(mlp(), teacher, loader, steps=10, sparsity=1.5)
    with pytest.raises(ValueError, match="group_size must be"):
        gradual_sparse_qat(mlp(), teacher, loader, steps=10, group_size=20)
    with pytest.raises(TypeError, match="teacher must be"):
        gradual_sparse_qat(mlp(), "teacher", loader, steps=10)
