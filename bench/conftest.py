import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """Benchmarks follow SPARSEINFER_BENCH_THREADS (default 2, the issue's setting)."""
    import os
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SPARSEINFER_BENCH_THREADS", "2")))
    yield
    torch.set_num_threads(before)
