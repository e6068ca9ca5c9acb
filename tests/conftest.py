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


def random_sparse(rows, cols, sparsity, dtype=torch.float32):
    w = torch.randn(rows, cols)
    w[torch.rand(rows, cols) < sparsity] = 0
    return w.to(dtype)
