"""`sparseinfer fuzz-load`: the worker pool reports crashes, hangs and over-allocation as such (a
harness that misses them proves nothing), cases are reproducible from (seed, index), and a short
run over every family and seed checkpoint ends in loaded models and CheckpointErrors only."""
import json
import os
import signal
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fuzz-load forks and reads /proc")

from sparseinfer.benchmarks import fuzz_cases, fuzz_load, fuzz_runner  # noqa: E402
from sparseinfer.benchmarks.fuzz_cases import Family  # noqa: E402
from sparseinfer.checkpoint import CheckpointError  # noqa: E402


def _job(job, send):
    """A work function whose behaviour the job names."""
    kind = job["kind"]
    if kind == "abort":
        os.abort()
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "sleep":
        time.sleep(60)
    if kind == "exit":
        os._exit(3)
    send({"ok": job["n"]})
    return fuzz_runner.RETIRE if kind == "retire" else None


@pytest.mark.parametrize("per_worker", [1, 50])
def test_runner_reports_crash_hang_and_goes_on(tmp_path, per_worker):
    kinds = ["ok", "abort", "ok", "sleep", "ok", "segv", "retire", "exit", "ok", "ok"]
    jobs = [{"kind": k, "n": i} for i, k in enumerate(kinds)]
    start = time.monotonic()
    done = {f.job["n"]: f for f in fuzz_runner.run_forked(jobs, _job, jobs=2, timeout=1.0, log_dir=str(tmp_path),
                                                         per_worker=per_worker)}
    assert time.monotonic() - start < 20
    assert sorted(done) == list(range(len(kinds)))  # every job ends exactly once, later jobs still run
    for n, kind in enumerate(kinds):
        fin = done[n]
        if kind in ("ok", "retire"):
            assert fin.status == "ok" and fin.messages == [{"ok": n}], fin
        elif kind == "sleep":
            assert fin.status == "hang" and "1 s" in fin.detail, fin
        else:
            assert fin.status == "crash", fin
            expected = {"abort": "SIGABRT", "segv": "SIGSEGV", "exit": "exit code 3"}[kind]
            assert expected in fin.detail, fin
    assert "Fatal Python error" in done[1].log_tail  # faulthandler's traceback comes back
    assert not list(tmp_path.iterdir())  # worker logs are removed


def test_runner_memory_cap(tmp_path):
    def work(job, send):
        try:
            bytearray(job * 2**20)
            send({"allocated": True})
        except MemoryError:
            send({"allocated": False})
    done = {f.job: f.messages for f in fuzz_runner.run_forked([16, 512], work, jobs=1, mem_cap=128 * 2**20,
                                                             log_dir=str(tmp_path))}
    assert done == {16: [{"allocated": True}], 512: [{"allocated": False}]}


# --- the fuzz driver, with planted bugs: a case family whose mutation makes the load misbehave

def _planted(behaviour):
    """A mutation that replaces sparseinfer.load in the worker (the worker ends with the case)."""
    def mutate(rng, directory, ctx):
        def load(directory, model=None):
            if behaviour == "abort":
                os.abort()
            if behaviour == "sleep":
                time.sleep(60)
            if behaviour == "alloc":
                block = bytearray(100 * 2**20)
                block[:: 4096] = b"x" * len(block[:: 4096])  # touched: resident
                raise CheckpointError("allocated 100 MiB first")
            if behaviour == "exception":
                raise KeyError("not a CheckpointError")
            if behaviour == "code":
                open(ctx.marker, "w").close()
            raise CheckpointError(f"bad file {directory}/model.safetensors (details)")
        fuzz_load.load = load
        return f"planted {behaviour}"
    return mutate


@pytest.fixture
def planted_families(monkeypatch):
    names = ["abort", "sleep", "alloc", "exception", "code", "error"]
    families = [Family(f"planted-{n}", 1, _planted(n)) for n in names]
    monkeypatch.setattr(fuzz_cases, "FAMILIES", families)
    monkeypatch.setattr(fuzz_cases, "BY_NAME", {f.name: f for f in families})
    monkeypatch.setattr(fuzz_cases, "STACK_PROBABILITY", 0.0)
    return names


def test_fuzz_reports_planted_failures(planted_families):
    expected = {"abort": "crash", "sleep": "hang", "alloc": "oom", "exception": "exception",
                "code": "code_exec", "error": "CheckpointError"}
    for name in planted_families:
        options = fuzz_load.Options(cases=2, seed=1, timeout=2.0 if name == "sleep" else 30.0,
                                    families=[f"planted-{name}"], seeds=["csr"], mem_cap_mb=1024)
        doc = fuzz_load.fuzz(options)
        assert doc["summary"]["cases_run"] == 2
        assert doc["histogram"][expected[name]] == 2, (name, doc["histogram"], doc["failures"])
        failing = expected[name] != "CheckpointError"
        assert doc["summary"]["failures"] == (2 if failing else 0)
        if failing:
            failure = doc["failures"][0]
            assert failure["reproduce"] == (f"sparseinfer fuzz-load --seed 1 --only 0 --families planted-{name} "
                                            "--seeds csr --keep /tmp/fuzz-case")
            assert failure["mutations"] == [f"planted-{name}: planted {name}"] or expected[name] == "hang"
        else:
            assert list(doc["message_classes"]) == ["bad file FILE"]
    text = fuzz_load.report_text(doc)
    assert "CheckpointError" in text and "failures: 0" in text


# --- the real thing, briefly

def test_cases_are_reproducible(tmp_path):
    seeds = sorted(fuzz_load.seeds())
    for index in (0, 7, 123):
        first, _ = fuzz_cases.plan(5, index, seeds)
        again, _ = fuzz_cases.plan(5, index, seeds)
        assert first == again
    assert len({tuple(fuzz_cases.plan(5, i, seeds)[0].families) for i in range(200)}) > 10


def test_fuzz_200_cases(tmp_path):
    """Every family and seed checkpoint; only loaded models and CheckpointErrors may come out."""
    path = tmp_path / "fuzz.json"
    options = fuzz_load.Options(cases=200, seed=7, timeout=20.0)
    code = fuzz_load.main(options, str(path))
    doc = json.loads(path.read_text())
    assert doc["summary"]["cases_run"] == 200 and not doc["summary"]["stopped_by_time_budget"]
    assert sum(doc["histogram"].values()) == 200
    assert doc["histogram"]["loaded"] > 0 and doc["histogram"]["CheckpointError"] > 0
    assert set(doc["families"]) == {f.name for f in fuzz_cases.FAMILIES if f.seeds is None or
                                    any(s in fuzz_load.seeds() for s in f.seeds)}
    assert doc["machine"]["cores"] >= 1
    assert doc["summary"]["failures"] == 0 and code == 0, json.dumps(doc["failures"], indent=1)[:6000]
