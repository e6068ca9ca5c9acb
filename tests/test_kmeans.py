"""1-D k-means codebooks (sparseinfer.formats.kmeans): shapes, exactness, kept zeros, Lloyd's
fixed point, empty clusters, determinism and bad input."""
import pytest
import torch

from sparseinfer.formats.kmeans import codebook_dequantize, kmeans_codebook, num_groups


def distinct_per_group(w, group_size):
    cols = w.shape[1]
    size = cols if group_size is None else group_size
    return max(len(torch.unique(w[r, c:c + size])) for r in range(w.shape[0]) for c in range(0, cols, size))


@pytest.mark.parametrize("shape,group_size", [((5, 37), None), ((4, 100), 32), ((3, 64), 64), ((6, 20), 128),
                                              ((2, 1), None), ((1, 33), 16)])
def test_shapes_and_at_most_k_values_per_group(shape, group_size):
    w = torch.randn(*shape)
    table, idx = kmeans_codebook(w, 16, group_size)
    groups = num_groups(shape[1], group_size)
    assert table.shape == (shape[0], groups, 16) and table.dtype == torch.float32
    assert idx.shape == shape and idx.dtype == torch.uint8 and int(idx.max()) < 16
    deq = codebook_dequantize(table, idx, group_size)
    assert deq.shape == shape and distinct_per_group(deq, group_size) <= 16
    # every weight maps to its group's own table
    size = shape[1] if group_size is None else group_size
    for r in range(shape[0]):
        for c in range(shape[1]):
            assert deq[r, c] == table[r, c // size, int(idx[r, c])]


def test_clustering_lowers_the_error_of_the_initial_grid():
    w = torch.randn(32, 256)
    errors = [float((codebook_dequantize(*kmeans_codebook(w, iters=i), None) - w).pow(2).mean())
              for i in (0, 5, 20)]
    assert errors[0] > errors[1] > errors[2]
    # 4 bits on a Gaussian: Lloyd-Max's optimum is 0.0095 of the variance; uniform min-max ~0.02
    assert errors[2] < 0.014


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [None, 8, 24])
def test_groups_with_at_most_k_distinct_values_are_exact(dtype, group_size):
    torch.manual_seed(1)
    rows, cols = 6, 48
    w = torch.empty(rows, cols)
    for r in range(rows):  # arbitrary (not grid) values, 1..16 distinct per row
        values = torch.randn(r * 3 + 1)
        w[r] = values[torch.randint(0, len(values), (cols,))]
    w = w.to(dtype)
    table, idx = kmeans_codebook(w, 16, group_size)
    assert torch.equal(codebook_dequantize(table, idx, group_size).to(dtype), w)
    assert torch.equal(codebook_dequantize(table, idx, group_size), w.float())  # bit for bit in fp32 too


def test_exact_and_clustered_rows_in_one_batch():
    w = torch.randn(4, 200)
    w[1] = torch.tensor([0.1, -2.5, 3.0])[torch.randint(0, 3, (200,))]
    w[3] = 0.7
    table, idx = kmeans_codebook(w, 16)
    deq = codebook_dequantize(table, idx, None)
    assert torch.equal(deq[1], w[1]) and torch.equal(deq[3], w[3])
    assert not torch.equal(deq[0], w[0])


def test_exactly_k_distinct_values():
    values = torch.linspace(-1, 1, 16) ** 3
    w = values[torch.randperm(16)].repeat(3, 4)
    table, idx = kmeans_codebook(w, 16)
    assert torch.equal(codebook_dequantize(table, idx, None), w)
    assert torch.equal(table[0, 0], torch.sort(values).values)


@pytest.mark.parametrize("group_size", [None, 16])
def test_keep_zeros(group_size):
    w = torch.randn(8, 80)
    w[torch.rand_like(w) < 0.6] = 0
    w[2] = 0                      # an all-zero row
    w[3] = torch.randn(80).abs() + 0.1  # a row without zeros: entry 0 is still reserved
    table, idx = kmeans_codebook(w, 16, group_size, keep_zeros=True)
    deq = codebook_dequantize(table, idx, group_size)
    assert bool((table[..., 0] == 0).all())
    assert torch.equal(idx == 0, w == 0)          # exactly the zeros map to entry 0
    assert torch.equal(deq == 0, w == 0)          # nothing else becomes zero
    assert not bool((idx[3] == 0).any())


def test_keep_zeros_exact_with_k_minus_1_nonzero_values():
    values = torch.tensor([0.0, -1.5, -0.25, 0.5, 2.0, 3.25, 7.0, -9.0, 1.0, 0.125, -0.5, 4.0, 5.5, -3.0, 6.0, 8.0])
    w = values[torch.randint(0, 16, (5, 60))]
    table, idx = kmeans_codebook(w, 16, keep_zeros=True)
    assert torch.equal(codebook_dequantize(table, idx, None), w)
    assert torch.equal(idx == 0, w == 0)


def test_negative_zero_maps_to_the_zero_entry():
    w = torch.tensor([[-0.0, 1.0, 0.0, -1.0, 2.0]])
    table, idx = kmeans_codebook(w, 4, keep_zeros=True)
    assert idx[0, 0] == 0 and idx[0, 2] == 0
    assert torch.equal(codebook_dequantize(table, idx, None), w)  # -0.0 == 0.0


def naive_lloyd_row(x, k, iters):
    """Per-row reference: linear init over [min, max], nearest assignment (a value on a midpoint goes
    up), mean update (empty clusters keep their value), then one last assignment + update."""
    x = x.double()
    c = x.min() + (x.max() - x.min()) * torch.arange(k, dtype=torch.float64) / (k - 1)

    def assign(c):
        mid = (c[1:] + c[:-1]) / 2
        return (x.unsqueeze(1) >= mid.unsqueeze(0)).sum(1)

    def update(c, a):
        out = c.clone()
        for j in range(k):
            if bool((a == j).any()):
                out[j] = x[a == j].mean()
        return out

    for _ in range(iters):
        c = update(c, assign(c))
    a = assign(c)
    return update(c, a), a


def test_matches_a_naive_per_row_lloyd():
    torch.manual_seed(3)
    w = torch.rand(6, 300) * torch.arange(1, 7).unsqueeze(1)  # uniform data: no empty cluster
    table, idx = kmeans_codebook(w, 8, iters=10)
    for r in range(6):
        c, a = naive_lloyd_row(w[r], 8, 10)
        assert torch.equal(idx[r].long(), a)
        torch.testing.assert_close(table[r, 0].double(), c, rtol=1e-6, atol=1e-7)


def test_result_is_a_lloyd_fixed_point():
    w = torch.randn(16, 500)
    table, idx = kmeans_codebook(w, 16, iters=200)
    for r in range(16):
        for j in range(16):
            members = w[r][idx[r] == j]
            if len(members):  # each centroid is the mean of its members
                torch.testing.assert_close(table[r, 0, j], members.double().mean().float(), rtol=1e-5, atol=1e-6)
        # and each value sits at its nearest centroid (up to rounding)
        dist = (w[r].unsqueeze(1) - table[r, 0].unsqueeze(0)).abs()
        chosen = dist.gather(1, idx[r].long().unsqueeze(1)).squeeze(1)
        assert bool((chosen <= dist.min(1).values + 1e-6).all())


def test_empty_clusters_are_reseeded():
    # one outlier stretches [min, max]: the linear grid leaves most clusters empty at first
    w = torch.randn(3, 1000)
    w[:, 0] = 100.0
    table, idx = kmeans_codebook(w, 16, iters=30)
    for r in range(3):
        assert len(torch.unique(idx[r])) == 16           # every entry in use
        assert bool((table[r, 0, 1:] >= table[r, 0, :-1]).all())  # tables stay sorted
    plain = codebook_dequantize(table, idx, None)
    assert float((plain - w)[:, 1:].pow(2).mean()) < 0.05


@pytest.mark.parametrize("init", ["linear", "kmeans++", "quantile"])
def test_deterministic(init):
    w = torch.randn(20, 150)
    w[:, 0] = 50.0
    first = kmeans_codebook(w, 16, 64, init=init)
    torch.manual_seed(123)  # the global RNG does not matter
    torch.rand(10)
    second = kmeans_codebook(w, 16, 64, init=init)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    if init == "kmeans++":
        other = kmeans_codebook(w, 16, 64, init=init, seed=1)
        assert other[0].shape == first[0].shape


@pytest.mark.parametrize("init", ["kmeans++", "quantile"])
def test_other_inits_are_as_good(init):
    w = torch.randn(16, 400)
    mse = lambda kw: float((codebook_dequantize(*kmeans_codebook(w, **kw), None) - w).pow(2).mean())
    assert mse({"init": init}) < 1.5 * mse({})


def test_small_k_and_empty_rows():
    w = torch.randn(3, 10)
    table, idx = kmeans_codebook(w, 2)
    assert table.shape == (3, 1, 2) and int(idx.max()) <= 1
    table, idx = kmeans_codebook(w, 2, keep_zeros=True)  # one non-zero centroid: the mean of the row
    torch.testing.assert_close(table[:, 0, 1], w.mean(1))
    table, idx = kmeans_codebook(torch.zeros(0, 10), 16, 4)
    assert table.shape == (0, 3, 16) and idx.shape == (0, 10)


def test_layer_sized_input_runs():
    w = torch.randn(256, 1024) * 0.02
    table, idx = kmeans_codebook(w, 16, 128)
    rel = (codebook_dequantize(table, idx, 128) - w).norm() / w.norm()
    assert float(rel) < 0.12


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 1}, "k must be"), ({"k": 257}, "k must be"), ({"k": 4.0}, "k must be"),
    ({"group_size": 0}, "group_size"), ({"iters": -1}, "iters"), ({"keep_zeros": 1}, "keep_zeros"),
    ({"init": "forgy"}, "init"), ({"seed": -1}, "seed"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans_codebook(torch.randn(4, 8), **kwargs)


@pytest.mark.parametrize("weight,match", [
    (torch.randn(8), "2-D"), (torch.ones(2, 3, dtype=torch.int32), "2-D floating"),
    (torch.tensor([[1.0, float("nan")]]), "inf or nan"), (torch.tensor([[float("inf"), 1.0]]), "inf or nan"),
    (torch.zeros(3, 0), "no columns"), ([[1.0, 2.0]], "torch.Tensor"),
])
def test_bad_weights(weight, match):
    with pytest.raises(ValueError, match=match):
        kmeans_codebook(weight)


def test_dequantize_checks():
    table, idx = kmeans_codebook(torch.randn(4, 40), 16, 16)
    with pytest.raises(ValueError, match="expected"):
        codebook_dequantize(table, idx, None)
    with pytest.raises(ValueError, match="expected"):
        codebook_dequantize(table, idx[:3], 16)
    bad = idx.clone()
    bad[0, 0] = 16
    with pytest.raises(ValueError, match="indices must lie"):
        codebook_dequantize(table, bad, 16)
    with pytest.raises(ValueError, match="table must be"):
        codebook_dequantize(table[0], idx, 16)
    with pytest.raises(ValueError, match="indices must be"):
        codebook_dequantize(table, idx.float(), 16)
