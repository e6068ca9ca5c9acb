"""Deep Compression weight sharing: cluster_weights (k-means tables written into the model), the
storage report (Huffman, relative indices) and finetune_centroids (trained quantization)."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sparseinfer import compress
from sparseinfer.compress.cluster import (ClusterResult, huffman_bits, huffman_code_lengths,
                                          relative_index_streams)


def mlp(seed=0, hidden=48):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 40), nn.ReLU(), nn.Linear(40, 5))


def distinct_per_group(w, group_size=None):
    size = w.shape[1] if group_size is None else group_size
    return max(len(torch.unique(w[r, c:c + size])) for r in range(w.shape[0]) for c in range(0, w.shape[1], size))


def test_weights_hold_the_tables_values():
    model, dense = mlp(), mlp()
    result = compress.cluster_weights(model)
    assert set(result.layers) == {"0", "2", "4"} and not result.skipped
    for name, layer in result.layers.items():
        weight = model.get_submodule(name).weight.detach()
        assert torch.equal(weight, layer.dequantized())
        assert distinct_per_group(weight) <= 16
        assert layer.table.shape == (weight.shape[0], 1, 16) and layer.indices.dtype == torch.uint8
        ref = dense.get_submodule(name).weight.detach()
        assert 0 < layer.rel_error < 0.1
        assert math.isclose(layer.rel_error, float((weight - ref).norm() / ref.norm()), rel_tol=1e-5)
        assert torch.equal(model.get_submodule(name).bias, dense.get_submodule(name).bias)
    assert result.is_clustered(model) and not result.is_clustered(dense)
    assert "bits/weight" in str(result) and result.to_dict()["layers"][0]["name"] == "0"


def test_already_clustered_weights_are_unchanged():
    model = mlp()
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            values = torch.randn(layer.out_features, 16)
            pick = torch.randint(0, 16, layer.weight.shape)
            layer.weight.copy_(values.gather(1, pick))
    before = copy.deepcopy(model.state_dict())
    result = compress.cluster_weights(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(layer.rel_error == 0 for layer in result.layers.values())


def test_pruned_zeros_stay_zero():
    model = mlp()
    compress.prune_magnitude(model, 0.5, filter=lambda name, m: name != "4").remove()
    zeros = {name: model.get_submodule(name).weight.detach() == 0 for name in ("0", "2", "4")}
    result = compress.cluster_weights(model)
    assert result.layers["0"].keep_zeros and result.layers["2"].keep_zeros
    assert not result.layers["4"].keep_zeros  # not pruned: "auto" clusters its values freely
    for name in ("0", "2"):
        layer = result.layers[name]
        weight = model.get_submodule(name).weight.detach()
        assert torch.equal(weight == 0, zeros[name])
        assert bool((layer.table[..., 0] == 0).all()) and torch.equal(layer.indices == 0, zeros[name])
        assert layer.coding.startswith("relative index")


def test_keep_zeros_false_clusters_zeros_too():
    model = mlp()
    compress.prune_magnitude(model, 0.5).remove()
    result = compress.cluster_weights(model, keep_zeros=False)
    assert not any(layer.keep_zeros for layer in result.layers.values())
    assert compress.cluster_weights(mlp(), keep_zeros=True).layers["4"].keep_zeros  # forced on


def test_deterministic():
    a, b = mlp(), mlp()
    ra = compress.cluster_weights(a, per="group", group_size=8)
    rb = compress.cluster_weights(b, per="group", group_size=8)
    for name in ra.layers:
        assert torch.equal(ra.layers[name].table, rb.layers[name].table)
        assert torch.equal(ra.layers[name].indices, rb.layers[name].indices)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb)


@pytest.mark.parametrize("group_size", [8, 16, 13, 1000])
def test_per_group(group_size):
    model = mlp()
    result = compress.cluster_weights(model, bits=3, per="group", group_size=group_size)
    for name, layer in result.layers.items():
        weight = model.get_submodule(name).weight.detach()
        groups = -(-weight.shape[1] // group_size)
        assert layer.table.shape == (weight.shape[0], groups, 8) and layer.group_size == group_size
        assert distinct_per_group(weight, group_size) <= 8
    per_channel = compress.cluster_weights(mlp(), bits=3)
    if group_size < 20:  # smaller groups fit better
        assert result.layers["2"].rel_error < per_channel.layers["2"].rel_error


def test_filter_and_tied_weights():
    model = mlp()
    result = compress.cluster_weights(model, filter=lambda name, m: name != "4")
    assert set(result.layers) == {"0", "2"} and result.skipped == {"4": "excluded by filter"}

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.body = nn.Linear(8, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.embed.weight

    tied = Tied()
    embed = tied.embed.weight.detach().clone()
    result = compress.cluster_weights(tied)
    assert set(result.layers) == {"body"} and "tied with embed.weight" in result.skipped["head"]
    assert torch.equal(tied.embed.weight, embed)


def test_bf16_weights_pack_exactly():
    model = mlp().to(torch.bfloat16)
    result = compress.cluster_weights(model, per="group", group_size=16)
    for name, layer in result.layers.items():
        weight = model.get_submodule(name).weight.detach()
        assert weight.dtype == torch.bfloat16
        assert torch.equal(layer.table.to(torch.bfloat16).float(), layer.table)  # table values fit bf16
        assert torch.equal(weight.float(), layer.dequantized())
    assert result.is_clustered(model)


def test_hf_conv1d_is_clustered_along_its_output_rows():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(12, 30))  # weight [in=30, out=12]
    result = compress.cluster_weights(model, bits=2)
    assert result.layers["0"].shape == (12, 30)
    assert distinct_per_group(model[0].weight.detach().t()) <= 4
    assert torch.equal(model[0].weight.detach().t(), result.layers["0"].dequantized())


# ---------------------------------------------------------------------------- storage

def test_huffman_code_lengths():
    assert huffman_code_lengths([5, 9, 12, 13, 16, 45]) == [4, 4, 3, 3, 3, 1]  # CLRS's example
    assert huffman_code_lengths([7] * 16) == [4] * 16
    assert huffman_code_lengths([0, 3, 0]) == [0, 1, 0]
    assert huffman_code_lengths([0, 0]) == [0, 0]
    lengths = huffman_code_lengths([1, 1, 2, 4, 8, 16, 32])
    assert sum(2.0 ** -n for n in lengths) == 1.0  # a complete prefix code
    assert huffman_bits([7] * 16) == 16 * 7 * 4
    with pytest.raises(ValueError, match="non-negative"):
        huffman_code_lengths([1, -1])


def test_relative_index_streams():
    # row-major non-zeros at 0, 2, 3, 40 (span 8): distances 1, 2, 1, 37 = 8 + 8 + 8 + 8 + 5
    mask = torch.zeros(2, 25, dtype=torch.bool)
    for p in (0, 2, 3, 40):
        mask.view(-1)[p] = True
    indices = torch.zeros(2, 25, dtype=torch.uint8)
    indices.view(-1)[torch.tensor([0, 2, 3, 40])] = torch.tensor([3, 1, 3, 2], dtype=torch.uint8)
    rel, idx = relative_index_streams(mask, indices, 4, 3)
    assert rel.tolist() == [2, 1, 0, 0, 1, 0, 0, 4]   # symbols 0..7 = distances 1..8
    assert idx.tolist() == [4, 1, 1, 2]               # 4 fillers at the zero entry


def test_storage_report_is_consistent():
    model = mlp()
    result = compress.cluster_weights(model)
    for layer in result.layers.values():
        n, k = layer.numel, 16
        assert layer.runtime_bits == 4 * n + 16 * layer.table.numel()
        assert layer.huffman_bits <= 4 * n                      # never worse than fixed 4-bit indices
        counts = torch.bincount(layer.indices.flatten().long(), minlength=k)
        assert layer.huffman_bits == huffman_bits(counts)
        assert layer.deep_compression_bits == layer.huffman_bits + layer.code_bits + 16 * layer.table.numel()
    total = sum(l.numel for l in result.layers.values())
    assert result.numel == total
    assert math.isclose(result.runtime_bits_per_weight, 8 * result.runtime_bytes / total)
    assert result.deep_compression_bytes == sum(l.deep_compression_bits for l in result.layers.values()) / 8


def test_uniform_indices_cost_exactly_four_bits():
    layer = nn.Linear(64, 32, bias=False)
    with torch.no_grad():  # every row holds each of 16 values 4 times: uniform index frequencies
        values = torch.randn(32, 16)
        layer.weight.copy_(values.repeat(1, 4))
    result = compress.cluster_weights(nn.Sequential(layer))
    assert result.layers["0"].huffman_bits == 4 * 64 * 32


def test_pruned_layers_are_cheaper_in_deep_compression_storage():
    dense_model, sparse_model = mlp(hidden=256), mlp(hidden=256)
    compress.prune_magnitude(sparse_model, 0.9).remove()
    dense = compress.cluster_weights(dense_model).layers["2"]
    sparse = compress.cluster_weights(sparse_model).layers["2"]
    assert sparse.runtime_bits == dense.runtime_bits       # the 4-bit kernels read every index
    assert sparse.huffman_bits < 0.5 * dense.huffman_bits  # only the non-zeros are stored


# ---------------------------------------------------------------------------- trained quantization

def regression_task(seed=0):
    torch.manual_seed(seed)
    teacher = mlp(seed + 100)
    x = torch.randn(512, 20)
    y = teacher(x).detach()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]
    loss_fn = lambda model, batch: F.mse_loss(model(batch[0]), batch[1])
    return teacher, batches, loss_fn


def full_loss(model, batches, loss_fn):
    with torch.no_grad():
        return sum(float(loss_fn(model, b)) for b in batches) / len(batches)


@pytest.mark.parametrize("prune", [False, True])
def test_finetuning_lowers_the_loss_and_keeps_the_clusters(prune):
    teacher, batches, loss_fn = regression_task()
    model = copy.deepcopy(teacher)
    if prune:
        compress.prune_magnitude(model, 0.5).remove()
    zeros = {n: model.get_submodule(n).weight.detach() == 0 for n in ("0", "2", "4")}
    result = compress.cluster_weights(model, bits=2)
    biases = {n: model.get_submodule(n).bias.detach().clone() for n in ("0", "2", "4")}
    before = full_loss(model, batches, loss_fn)
    losses = compress.finetune_centroids(model, result, batches, loss_fn, lr=3e-3, steps=80)
    after = full_loss(model, batches, loss_fn)
    assert len(losses) == 80 and after < 0.7 * before
    assert result.is_clustered(model)
    for name, layer in result.layers.items():
        weight = model.get_submodule(name).weight.detach()
        assert distinct_per_group(weight) <= 4
        assert torch.equal(model.get_submodule(name).bias, biases[name])  # only the centroids train
        if prune:
            assert torch.equal(weight == 0, zeros[name]) and bool((layer.table[..., 0] == 0).all())
    assert all(p.grad is None for p in model.parameters())


def test_finetune_per_group_sgd_and_method():
    teacher, batches, loss_fn = regression_task(1)
    model = copy.deepcopy(teacher)
    result = compress.cluster_weights(model, bits=2, per="group", group_size=8)
    before = full_loss(model, batches, loss_fn)
    losses = result.finetune(model, batches, loss_fn, lr=0.02, optimizer="sgd")  # one pass
    assert len(losses) == len(batches) and full_loss(model, batches, loss_fn) < before
    for name in result.layers:
        assert distinct_per_group(model.get_submodule(name).weight.detach(), 8) <= 4
    assert result.is_clustered(model)


def test_finetune_train_other_changes_biases():
    teacher, batches, loss_fn = regression_task(2)
    model = copy.deepcopy(teacher)
    result = compress.cluster_weights(model, bits=2)
    bias = model[0].bias.detach().clone()
    compress.finetune_centroids(model, result, batches, loss_fn, lr=1e-3, steps=5, train_other=True)
    assert not torch.equal(model[0].bias, bias) and result.is_clustered(model)
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------------------- codebook packing

@pytest.mark.parametrize("group_size", [None, 32])
def test_sparsify_codebook_packs_the_clusters_exactly(group_size):
    from sparseinfer import registry
    if "codebook" not in registry.names():
        pytest.skip("the codebook format is not registered in this build")
    import sparseinfer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 40))
    compress.prune_magnitude(model, 0.5, filter=lambda name, m: name == "2").remove()
    result = compress.cluster_weights(model, per="channel" if group_size is None else "group",
                                      group_size=group_size)
    x = torch.randn(7, 64)
    expected = model(x)
    options = {} if group_size is None else {"group_size": group_size}
    report = sparseinfer.sparsify(model, format="codebook", act="none", **options)  # fp32 math: exact
    assert all(layer.converted for layer in report.layers)
    for name, layer in result.layers.items():
        packed = model.get_submodule(name).weight
        assert torch.equal(packed.to_dense(torch.float32), layer.dequantized())
        # the packed table may order the values differently; it holds the same ones
        assert set(packed.table().flatten().tolist()) >= set(layer.dequantized().flatten().tolist())
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 0}, "bits must be"), ({"bits": 9}, "bits must be"), ({"bits": True}, "bits must be"),
    ({"method": "uniform"}, "method must be"), ({"per": "row"}, "per must be"),
    ({"per": "group", "group_size": 0}, "group_size must be"), ({"per": "group", "group_size": None}, "group_size"),
    ({"keep_zeros": "yes"}, "keep_zeros"), ({"keep_zeros": 1}, "keep_zeros"),
    ({"filter": "lm_head"}, "filter must be"), ({"iters": -1}, "iters"), ({"init": "random"}, "init"),
    ({"rel_bits": 0}, "rel_bits"), ({"filter": lambda name, m: False}, "no Linear layers"),
])
def test_bad_arguments_raise(kwargs, match):
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        compress.cluster_weights(model, **kwargs)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_non_finite_weight_raises_and_leaves_the_model_unchanged():
    model = mlp()
    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    first = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="'4'.*inf or nan"):
        compress.cluster_weights(model)
    assert torch.equal(model[0].weight, first)
    with pytest.raises(ValueError, match="no Linear layers"):
        compress.cluster_weights(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="nn.Module"):
        compress.cluster_weights("model")


def test_finetune_bad_arguments():
    teacher, batches, loss_fn = regression_task()
    model = copy.deepcopy(teacher)
    result = compress.cluster_weights(model, bits=2)
    for kwargs, match in (({"lr": 0}, "lr must be"), ({"lr": float("nan")}, "lr must be"),
                          ({"steps": -1}, "steps must be"), ({"optimizer": "lbfgs"}, "optimizer")):
        with pytest.raises(ValueError, match=match):
            compress.finetune_centroids(model, result, batches, loss_fn, **kwargs)
    with pytest.raises(ValueError, match="ClusterResult"):
        compress.finetune_centroids(model, {}, batches, loss_fn)
    with pytest.raises(ValueError, match="loss_fn"):
        compress.finetune_centroids(model, result, batches, None)
    with pytest.raises(ValueError, match="no Linear layer '0'"):
        compress.finetune_centroids(mlp(hidden=16), result, batches, loss_fn)
    with pytest.raises(ValueError, match="no clustered layers"):
        compress.finetune_centroids(model, ClusterResult(4, "kmeans", "channel", None), batches, loss_fn)


# ---------------------------------------------------------------------------- quality recipes

def test_quality_recipes_4bit_uniform_and_kmeans():
    pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn")
    from sparseinfer.quality import methods
    from sparseinfer.quality.measure import state_bytes
    from sparseinfer.quality.tasks import digits_mlp_task
    task = digits_mlp_task(hidden=32, train_steps=10)
    torch.manual_seed(0)
    dense = task.build()
    for name, recipe in methods.weight_sharing_recipes(steps=5).items():
        out = recipe(task, copy.deepcopy(dense))
        assert out.size_bytes is not None and out.size_bytes < 0.4 * state_bytes(dense), name
        assert "b/w" in out.setting
        for layer in (out.model[0], out.model[2], out.model[4]):
            assert distinct_per_group(layer.weight.detach()) <= 16, name
        if name.startswith("50%"):
            zeros = sum(int((l.weight == 0).sum()) for l in (out.model[0], out.model[2], out.model[4]))
            assert zeros >= 0.5 * sum(l.weight.numel() for l in (dense[0], dense[2], dense[4])) - 3
