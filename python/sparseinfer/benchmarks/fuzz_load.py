"""`sparseinfer fuzz-load`: thousands of hostile checkpoints, each loaded (sparseinfer.load, one
forward pass of what loaded) and inspected (sparseinfer.inspect) in a worker forked from this
process, under a timeout per case and a memory cap (RLIMIT_DATA). Every case must end as a loaded
model or a CheckpointError; anything else is a failure:
  crash      the worker died (signal, abort, unexpected exit)
  hang       no result within --timeout seconds (the worker is killed)
  oom        peak RSS grew by more than 4x the checkpoint's data bytes + the seed's own load cost
             + --rss-slack-mb, or an allocation failed under the cap (MemoryError anywhere in the
             exception chain, torch "can't allocate memory"), whatever the exception became
  exception  any exception but CheckpointError (from load, inspect or the forward pass)
  code_exec  code planted in the checkpoint (auto_map module, pickle) ran
A worker runs up to --per-worker cases, and is replaced after any finding. Cases come from
fuzz_cases (families, seeds); the worker pool from fuzz_runner; the report from fuzz_report."""
from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..checkpoint import CheckpointError, inspect, load
from . import fuzz_cases as cases
from . import fuzz_runner as runner
from .fuzz_report import report_json, report_text
from .fuzz_seeds import Seed, seeds, write_seeds

FAILURES = ("crash", "hang", "oom", "exception", "code_exec")
RSS_FACTOR = 4


@dataclass
class Options:
    cases: int = 10_000
    seed: int = 0
    jobs: int = 0                      # 0: one per CPU
    timeout: float = 10.0              # seconds per case
    mem_cap_mb: int = 1024             # heap a worker may add (RLIMIT_DATA)
    rss_slack_mb: int = 16
    per_worker: int = 50               # cases a forked worker runs before a fresh one (1: fork per case)
    time_budget: Optional[float] = None  # seconds: start no case after this
    only: Optional[list[int]] = None   # run just these case indices
    families: Optional[list[str]] = None
    keep: Optional[str] = None         # keep failing (with --only: all) case directories here
    seeds: Optional[list[str]] = None


@dataclass
class Outcome:
    index: int
    seed: str
    families: list[str]
    outcome: str                        # loaded | CheckpointError | one of FAILURES
    seconds: float
    detail: str = ""                    # the error message / crash signal / hang timeout
    message_class: str = ""
    inspect: str = ""                   # ok | CheckpointError (failures show in outcome)
    mutations: list[str] = field(default_factory=list)
    rss_growth: int = 0
    rss_budget: int = 0
    data_bytes: int = 0
    log_tail: str = ""


# ------------------------------------------------------------------------- in the child

def _memory_failure(exc: BaseException, budget: int) -> Optional[str]:
    """Why `exc` (or anything in its cause/context chain) shows an over-large allocation."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError):
            return f"MemoryError under the memory cap: {type(exc).__name__}: {str(exc)[:200]}"
        text = str(exc)
        asked = re.search(r"tried to allocate (\d+) bytes", text)
        if "can't allocate memory" in text and (asked is None or int(asked.group(1)) > budget):
            return f"allocation refused: {text[:200]}"
        exc = exc.__cause__ or exc.__context__
    return None


def _attempt(fn: Callable[[], None], budget: int) -> tuple[str, str]:
    """(status, detail): ok, CheckpointError (message), oom or exception (type, message, where)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
        return "ok", ""
    except BaseException as exc:  # noqa: B902 - everything is a finding here, SystemExit included
        memory = _memory_failure(exc, budget)
        if memory:
            return "oom", memory
        if isinstance(exc, CheckpointError):
            return "CheckpointError", str(exc)
        where = traceback.extract_tb(exc.__traceback__)[-3:]
        at = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(where))
        return "exception", f"{type(exc).__name__}: {str(exc)[:300]} (at {at})"


@dataclass
class _Run:
    """What every child needs: the parent builds it before forking."""
    options: Options
    seeds: dict[str, Seed]
    seed_dirs: dict[str, str]
    case_root: str
    baselines: dict[str, int]
    context_files: list[str]

    def case_dir(self, index: int) -> str:
        return os.path.join(self.case_root, f"case-{index}")

    def work(self, index: int, send: runner.Send) -> Optional[str]:
        spec, rng = cases.plan(self.options.seed, index, sorted(self.seed_dirs), self.options.families)
        directory = self.case_dir(index)
        ctx = cases.Context(self.context_files, directory + ".pwned")
        shutil.rmtree(directory, ignore_errors=True)  # left by an earlier run into the same --keep
        _remove(ctx.marker)
        mutations = cases.materialize(spec, rng, self.seed_dirs[spec.seed], directory, ctx)
        data = cases.data_bytes(directory)
        budget = RSS_FACTOR * data + self.baselines.get(spec.seed, 0) + self.options.rss_slack_mb * 2**20
        send({"mutations": mutations, "data_bytes": data, "budget": budget})
        result = self.check(self.seeds[spec.seed], directory, budget, ctx.marker)
        send(result)
        statuses = (result["load"][0], result["inspect"][0])
        # after a finding, or anything that may leave state behind, the next case gets a fresh worker
        if result["code_exec"] or result["growth"] > budget or \
                any(s not in ("ok", "CheckpointError") for s in statuses):
            return runner.RETIRE
        return None

    @staticmethod
    def check(seed: Seed, directory: str, budget: int, marker: str) -> dict:
        target = seed.model() if seed.model else None
        start = runner.reset_peak_rss()
        model = []
        loaded = _attempt(lambda: model.append(load(directory, target)), budget)
        if model:  # whatever loads must run
            ran = _attempt(lambda: seed.run(model[0]), budget)
            if ran[0] != "ok":
                loaded = (ran[0] if ran[0] != "CheckpointError" else "exception", "forward pass: " + ran[1])
        inspected = _attempt(lambda: str(inspect(directory)), budget)
        growth = runner.peak_rss() - start
        pwned = os.path.exists(marker) or os.environ.get("SPARSEINFER_FUZZ_PWNED") == "1"
        return {"load": loaded, "inspect": inspected, "growth": growth, "code_exec": pwned}


# ------------------------------------------------------------------------- in the parent

def message_class(message: str) -> str:
    """A CheckpointError message without its particulars: names, numbers, quoted values, details."""
    text = re.sub(r"\s*\(.*", "", message, flags=re.S)            # library details in parentheses
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\b(tensor|layer|group) [\w.\-/:]+", r"\1 …", text)
    text = re.sub(r"[\w.\-/]*\.(safetensors|json)\b", "FILE", text)
    text = re.sub(r"(?<![\w])(/[\w.\-]+)+", "PATH", text)
    text = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:90]


def _classify(fin: runner.Finished, spec: cases.CaseSpec) -> Outcome:
    info = {k: v for m in fin.messages for k, v in m.items()}
    out = Outcome(spec.index, spec.seed, spec.families, "", round(fin.seconds, 4),
                  mutations=info.get("mutations", []), data_bytes=info.get("data_bytes", 0),
                  rss_budget=info.get("budget", 0), log_tail=fin.log_tail)
    if fin.status != "ok" or "load" not in info:
        out.outcome = fin.status if fin.status != "ok" else "crash"
        out.detail = fin.detail or "no result"
        return out
    (load_status, load_detail), (inspect_status, inspect_detail) = info["load"], info["inspect"]
    out.rss_growth = info["growth"]
    out.inspect = inspect_status
    if info["code_exec"]:
        out.outcome, out.detail = "code_exec", "planted code ran during load/inspect"
    elif "oom" in (load_status, inspect_status):
        out.outcome = "oom"
        out.detail = load_detail if load_status == "oom" else f"inspect: {inspect_detail}"
    elif out.rss_growth > out.rss_budget:
        out.outcome = "oom"
        out.detail = (f"peak RSS grew {out.rss_growth / 2**20:.1f} MiB > budget {out.rss_budget / 2**20:.1f} MiB "
                      f"({RSS_FACTOR}x {out.data_bytes} data bytes + seed cost + slack); load: {load_status}")
    elif "exception" in (load_status, inspect_status):
        out.outcome = "exception"
        out.detail = load_detail if load_status == "exception" else f"inspect: {inspect_detail}"
    elif load_status == "ok":
        out.outcome = "loaded"
    else:
        out.outcome, out.detail = "CheckpointError", load_detail
        out.message_class = message_class(load_detail)
    return out


def _warm_up(run: _Run) -> None:
    """Load every seed once here (lazy imports, caches: the children inherit them), then measure
    each seed's own peak-RSS cost in forked children: the budget's per-seed part."""
    for name, seed in run.seeds.items():
        status = _Run.check(seed, run.seed_dirs[name], 2**62, os.devnull + ".none")
        if status["load"][0] != "ok" or status["inspect"][0] != "ok":
            raise RuntimeError(f"fuzz-load: the unmutated seed checkpoint {name!r} does not load: {status}")

    def measure(name, send):
        send(_Run.check(run.seeds[name], run.seed_dirs[name], 2**62, os.devnull + ".none"))

    names = [n for n in run.seeds for _ in range(3)]
    for fin in runner.run_forked(names, measure, jobs=1, timeout=60, log_dir=run.case_root):
        if fin.status != "ok":
            raise RuntimeError(f"fuzz-load: seed {fin.job!r} failed in a child: {fin.detail} {fin.log_tail}")
        run.baselines[fin.job] = max(run.baselines.get(fin.job, 0), fin.messages[0]["growth"])


def fuzz(options: Options, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the cases; returns the JSON report (see fuzz_report.report_json)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers inherit no thread pools they cannot use
    available = seeds()
    chosen = {n: s for n, s in available.items() if options.seeds is None or n in options.seeds}
    unknown = sorted(set(options.seeds or ()) - set(available)) + \
        sorted(set(options.families or ()) - set(cases.BY_NAME))
    if unknown or not chosen:
        raise ValueError(f"unknown seed(s)/famil(ies) {unknown}; seeds: {sorted(available)}, "
                         f"families: {sorted(cases.BY_NAME)}")
    jobs = options.jobs or os.cpu_count() or 1
    root = tempfile.mkdtemp(prefix="sparseinfer-fuzz-")
    case_root = options.keep or os.path.join(root, "cases")
    os.makedirs(case_root, exist_ok=True)
    started = time.monotonic()
    try:
        seed_dirs = write_seeds(os.path.join(root, "seeds"), chosen)
        context_files = sorted(os.path.join(d, f) for d in seed_dirs.values() for f in os.listdir(d))
        run = _Run(options, chosen, seed_dirs, case_root, {}, context_files)
        _warm_up(run)
        gc.collect()
        gc.freeze()  # the children's garbage collector leaves the parent's objects (shared pages) alone
        indices = options.only if options.only is not None else range(options.cases)
        deadline = None if options.time_budget is None else time.monotonic() + options.time_budget
        outcomes: list[Outcome] = []
        setup_seconds = time.monotonic() - started
        t0, last = time.monotonic(), time.monotonic()
        for fin in runner.run_forked(indices, run.work, jobs=jobs, timeout=options.timeout,
                                     mem_cap=options.mem_cap_mb * 2**20, log_dir=case_root,
                                     per_worker=options.per_worker, deadline=deadline):
            spec, _ = cases.plan(options.seed, fin.job, sorted(seed_dirs), options.families)
            outcome = _classify(fin, spec)
            outcomes.append(outcome)
            keep = options.keep and (options.only is not None or outcome.outcome in FAILURES)
            if not keep:
                shutil.rmtree(run.case_dir(fin.job), ignore_errors=True)
                _remove(run.case_dir(fin.job) + ".pwned")
            if progress and (time.monotonic() - last > 15 or len(outcomes) == len(indices)):
                last = time.monotonic()
                bad = sum(o.outcome in FAILURES for o in outcomes)
                progress(f"  {len(outcomes)}/{len(indices)} cases, {len(outcomes) / (last - t0):.1f}/s, "
                         f"{bad} failure(s)")
        elapsed = time.monotonic() - t0
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)
    stopped = len(outcomes) < len(indices)
    return report_json(options, outcomes, elapsed, setup_seconds, run.baselines, jobs, stopped,
                       {f.name: f.what for f in cases.FAMILIES}, FAILURES)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def main(options: Options, json_path: Optional[str] = None) -> int:
    """The CLI entry: run, print the report, write JSON; 1 when any case failed."""
    import json
    print(f"sparseinfer fuzz-load: {options.cases if options.only is None else len(options.only)} cases, "
          f"seed {options.seed} ...", file=sys.stderr, flush=True)
    document = fuzz(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(report_text(document))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(document, f, indent=2)
        print(f"wrote {json_path}")
    return 1 if document["summary"]["failures"] else 0
