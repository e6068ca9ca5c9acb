"""Build, dispatch and thread-pool behaviour."""
import os
import subprocess
import sys

import pytest
import torch

import sparseinfer
from sparseinfer import CSR, ops
from conftest import random_sparse


def test_build_info_and_features():
    info = sparseinfer.build_info()
    assert info["active_isa"] in info["supported_isas"]
    assert set(info["supported_isas"]) <= set(info["compiled_isas"])
    assert "reference" in info["supported_isas"]
    assert info["best_isa"] == info["supported_isas"][-1]
    features = sparseinfer.cpu_features()
    if features["avx512f"] and features["os_avx512"] and features["avx512bw"]:
        assert "avx512" in info["supported_isas"]


def test_set_isa_errors():
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'") as error:
        sparseinfer.set_cpu_isa("sse9")
    assert "expected one of reference, avx2, avx512, avx512_vnni, amx" in str(error.value)
    before = sparseinfer.build_info()["active_isa"]
    with sparseinfer.cpu_isa("reference"):
        assert sparseinfer.build_info()["active_isa"] == "reference"
    assert sparseinfer.build_info()["active_isa"] == before


def _run(env_isa):
    env = dict(os.environ, SPARSEINFER_CPU_ISA=env_isa)
    code = "import sparseinfer; print(sparseinfer.build_info()['active_isa'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_env_override():
    out = _run("reference")
    assert out.returncode == 0 and out.stdout.strip() == "reference"
    out = _run("bogus")
    assert out.returncode != 0 and "unknown CPU ISA 'bogus'" in out.stderr


@pytest.mark.skipif("avx512" in sparseinfer.build_info()["supported_isas"],
                    reason="needs a CPU without AVX-512 to test the refusal")
def test_env_override_refuses_missing_isa():
    out = _run("avx512")
    assert out.returncode != 0 and "does not support" in out.stderr


def test_fork_child_gets_a_working_pool():
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    w = random_sparse(512, 512, 0.5)
    csr = CSR.from_dense(w)
    x = torch.randn(32, 512)
    expected = ops.csr_linear(x, csr)  # parent pool is alive
    pid = os.fork()
    if pid == 0:  # child: must not hang on the parent's (absent) workers
        ok = torch.equal(ops.csr_linear(x, csr), expected)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_int8_tiers_follow_the_cpu():
    info, features = sparseinfer.build_info(), sparseinfer.cpu_features()
    if "avx512" in info["supported_isas"] and features["avx512_vnni"]:
        assert "avx512_vnni" in info["supported_isas"]
    # AMX only where the CPU has it, the OS enables its state and Linux granted the permission.
    has_amx = features["amx_tile"] and features["amx_int8"] and features["os_amx"] and features["amx_permitted"]
    assert ("amx" in info["supported_isas"]) == (has_amx and "avx512_vnni" in info["supported_isas"])
    if not has_amx:
        out = _run("amx")
        assert out.returncode != 0 and "does not support" in out.stderr


def test_pool_gives_identical_results_whoever_runs_the_tasks():
    """Tasks go to their own worker or are run by the caller when that worker is late (busy torch
    OpenMP threads, concurrent Python threads, a pool resize): the output must not change."""
    import threading
    w = random_sparse(300, 700, 0.7)
    csr = CSR.from_dense(w)
    x = torch.randn(17, 700)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = ops.csr_linear(x, csr)
        outputs = []
        for threads in (2, 3, 5, 2):  # resizes the pool between runs
            torch.set_num_threads(threads)
            for _ in range(20):
                torch.randn(256, 256) @ torch.randn(256, 256)  # leaves torch's OpenMP threads spinning
                outputs.append(ops.csr_linear(x, csr))
        errors = []

        def hammer():
            try:
                for _ in range(50):
                    if not torch.equal(ops.csr_linear(x, csr), expected):
                        errors.append("mismatch")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))
        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(out, expected) for out in outputs)
    assert errors == []
