import pytest
import torch

import sparseinfer


@pytest.fixture(params=sparseinfer.build_info()["supported_isas"])
def isa(request):
    """Runs the test once per CPU ISA tier this host supports (forced via the dispatch override)."""
    with sparseinfer.cpu_isa(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny matmuls on a busy 2-core host: one torch thread for the test, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_sparse(rows, cols, sparsity, dtype=torch.float32):
    w = torch.randn(rows, cols)
    w[torch.rand(rows, cols) < sparsity] = 0
    return w.to(dtype)


def random_2_4(rows, cols, dtype=torch.float32, extra_zeros=0.0):
    """A random weight pruned to 2:4 (groups along the input dim), optionally with extra zeros."""
    from sparseinfer.compress import prune_2_4
    w = prune_2_4(torch.randn(rows, cols))
    if extra_zeros:
        w[torch.rand(rows, cols) < extra_zeros] = 0
    return w.to(dtype)
