"""N:M magnitude pruning."""
import pytest
import torch

from sparseinfer import Sparse24
from sparseinfer.compress import n_m_mask, prune_2_4, prune_n_m


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2), (0, 4), (4, 4)])
@pytest.mark.parametrize("cols", [8, 13, 64])
def test_keeps_the_n_largest_of_every_group(n, m, cols):
    w = torch.randn(5, cols)
    pruned = prune_n_m(w, n, m)
    kept = pruned != 0
    for g in range(0, cols, m):
        group = w[:, g:g + m].abs()
        size = group.shape[1]
        assert (kept[:, g:g + m].sum(1) == min(n, size)).all()
        if 0 < n < size:  # every kept magnitude >= every dropped one
            dropped_max = torch.where(kept[:, g:g + m], 0.0, group).max(1).values
            kept_min = torch.where(kept[:, g:g + m], group, float("inf")).min(1).values
            assert (kept_min >= dropped_max).all()
    assert torch.equal(pruned[kept], w[kept])


def test_ties_keep_the_lower_column():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]])
    assert n_m_mask(w, 2, 4).tolist() == [[True, True, False, False, True, True, False, False]]
    assert torch.equal(n_m_mask(w, 2, 4), n_m_mask(w.clone(), 2, 4))


def test_2_4_result_packs_and_keeps_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = torch.randn(6, 30).to(dtype)
        pruned = prune_2_4(w)
        assert pruned.dtype == dtype
        assert Sparse24.first_violation(pruned) is None
        assert torch.equal(Sparse24.from_dense(pruned).to_dense(), pruned)
    assert not w.requires_grad


def test_groups_run_along_the_last_dim():
    w = torch.randn(2, 3, 8)
    assert torch.equal(prune_2_4(w)[1, 2], prune_2_4(w[1, 2:3])[0])


def test_zeros_count_as_smallest():
    w = torch.zeros(1, 4)
    w[0, 3] = -2.0
    assert prune_2_4(w).tolist() == [[0.0, 0.0, 0.0, -2.0]]
    assert n_m_mask(w, 2, 4).tolist() == [[True, False, False, True]]


@pytest.mark.parametrize("args,error,match", [
    ((torch.randn(4, 8), 3, 2), ValueError, "n <= m"),
    ((torch.randn(4, 8), 2, 0), ValueError, "m >= 1"),
    ((torch.randn(4, 8), 2.0, 4), ValueError, "integers"),
    ((torch.randint(0, 3, (4, 8)), 2, 4), ValueError, "floating point"),
    ((torch.tensor(1.0), 2, 4), ValueError, "at least one dimension"),
    ((torch.tensor([[1.0, float("nan"), 0.0, 2.0]]), 2, 4), ValueError, "inf or nan"),
    (([1.0, 2.0], 2, 4), TypeError, "torch.Tensor"),
])
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        prune_n_m(*args)
