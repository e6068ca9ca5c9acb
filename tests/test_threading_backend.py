"""Where the kernels' parallel regions run: torch's own OpenMP team (default) or our pool. Both give
bit-identical results, a forked child falls back to the pool (libgomp cannot run a team there),
and bad names are refused."""
import os

import pytest
import torch

import sparseinfer
from sparseinfer.registry import FORMATS


@pytest.fixture(autouse=True)
def restore_backend():
    yield
    sparseinfer.set_threading_backend("auto")


def _layers():
    torch.manual_seed(0)
    out = []
    for spec in FORMATS.values():
        dense, packed = spec.example(512, 1024, 0.7 if spec.tunable_sparsity else 0.5)
        out.append((spec, packed, torch.randn(5, 1024)))
    return out


def test_default_is_torchs_openmp_runtime_when_loaded():
    backend = sparseinfer.threading_backend()
    assert backend == "pool" or backend.startswith("openmp:"), backend
    if os.environ.get("SPARSEINFER_THREADING", "auto") in ("auto", "openmp"):
        # torch's CPU wheels load libgomp (or libiomp5): then it must be found
        import torch._C  # noqa: F401
        maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
        if "libgomp" in maps or "libiomp5" in maps:
            assert backend.startswith("openmp:")
    assert sparseinfer.build_info()["threading"] == backend


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_backends_bit_identical(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for spec, packed, x in _layers():
            results = {}
            for backend in ("openmp", "pool"):
                sparseinfer.set_threading_backend(backend)
                results[backend] = spec.op(x, packed)
            assert torch.equal(results["openmp"], results["pool"]), spec.name
    finally:
        torch.set_num_threads(previous)


def test_pool_backend_is_named_pool():
    sparseinfer.set_threading_backend("pool")
    assert sparseinfer.threading_backend() == "pool"
    sparseinfer.set_threading_backend("auto")
    assert sparseinfer.threading_backend() != ""


@pytest.mark.parametrize("bad", ["", "omp", "OpenMP", None, 3])
def test_bad_backend_name(bad):
    with pytest.raises(ValueError, match="threading backend"):
        sparseinfer.set_threading_backend(bad)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_runs_kernels_on_the_pool():
    spec, packed, x = _layers()[0]
    expected = spec.op(x, packed)  # the parent has used its backend (OpenMP team) before forking
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not hang on the parent's OpenMP team
        try:
            ok = torch.equal(spec.op(x, packed), expected)
            os.write(write, f"{int(ok)} {sparseinfer.threading_backend()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    import select
    ready, _, _ = select.select([read], [], [], 60)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("kernel call in a forked child hung")
    message = os.read(read, 1000).decode()
    os.waitpid(pid, 0)
    ok, backend = message.split(" ", 1)
    assert ok == "1"
    assert backend == "pool"


def test_bad_environment_variable_fails_at_import():
    import subprocess
    import sys
    env = dict(os.environ, SPARSEINFER_THREADING="fast")
    proc = subprocess.run([sys.executable, "-c", "import sparseinfer"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "SPARSEINFER_THREADING must be one of auto, openmp, pool" in proc.stderr
    env["SPARSEINFER_THREADING"] = "pool"
    proc = subprocess.run([sys.executable, "-c", "import sparseinfer; print(sparseinfer.threading_backend())"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "pool"
