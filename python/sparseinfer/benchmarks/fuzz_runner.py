"""Run many small jobs in workers forked from this process, with a wall-clock timeout per job and an
memory cap (RLIMIT_DATA) per worker, `jobs` workers at a time. Forking from a parent that has already
imported torch and sparseinfer costs tens of milliseconds (its page tables), a fresh interpreter
seconds; a worker therefore runs up to `per_worker` jobs in a row (1: a fresh fork for every job)
and is replaced when it dies, is killed, asks to retire (after a finding) or has done its share.

The parent hands a worker one job at a time through a pipe; the worker reports through another,
one JSON object per line (`send`); what it prints goes to a log file, emptied at each job, whose
tail comes back when a job dies. Every job ends as exactly one Finished:
  status "ok"    the work function returned (the worker may go on)
  status "crash" the worker died during the job: a signal (SIGSEGV, SIGABRT ...) or an exit
  status "hang"  no result after `timeout` seconds: the worker is killed (SIGKILL)
Linux only (fork, /proc). The parent should run no threads that the workers need."""
from __future__ import annotations

import faulthandler
import json
import os
import resource
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

Send = Callable[[dict], None]
RETIRE = "retire"  # a work function returning this ends its worker after the job


@dataclass
class Finished:
    job: Any
    status: str                      # ok | crash | hang
    messages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""                 # crash: the signal or exit code; hang: the timeout
    log_tail: str = ""               # the end of what the job wrote to stdout/stderr (crash, hang)


def proc_status(field_name: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM, VmSize ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak_rss() -> int:
    """Set this process's peak RSS (VmHWM) to its current RSS; returns that, in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return proc_status("VmRSS") * 1024


def peak_rss() -> int:
    """Peak RSS since the last reset_peak_rss, in bytes."""
    return proc_status("VmHWM") * 1024


def cap_memory(extra_bytes: int) -> int:
    """RLIMIT_DATA = the current data size + extra_bytes: a larger allocation (heap, anonymous
    mmap) fails (MemoryError, ENOMEM) instead of taking the machine's memory. Read-only file
    mappings do not count, so safetensors may still map a huge sparse file as it would without the
    cap (RLIMIT_AS would refuse that). Returns the current data size (bytes)."""
    size = proc_status("VmData") * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (size + extra_bytes, size + extra_bytes))
    return size


@dataclass
class _Worker:
    pid: int
    to_worker: int                    # fd: jobs, one JSON line each
    from_worker: int                  # fd: messages, one JSON line each
    log_path: str
    job: Any = None
    has_job: bool = False
    start: float = 0.0
    buffer: bytes = b""
    messages: list = field(default_factory=list)


def _worker_main(work, job_fd: int, result_fd: int, log_path: str, mem_cap: Optional[int],
                 per_worker: int) -> None:
    """In the forked worker: never returns."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        faulthandler.enable(sys.stderr)  # a Python traceback in the log on SIGSEGV / SIGABRT
        jobs_in = os.fdopen(job_fd, "r")
        out = os.fdopen(result_fd, "w", buffering=1)
        send = (lambda message: out.write(json.dumps(message, default=str) + "\n"))
        size = cap_memory(mem_cap) if mem_cap is not None else 0
        for n in range(per_worker):
            line = jobs_in.readline()
            if not line:
                break
            for stream in (1, 2):  # the log holds this job's output only
                os.ftruncate(stream, 0)
                os.lseek(stream, 0, os.SEEK_SET)
            verdict = work(json.loads(line), send)
            retire = verdict == RETIRE or n == per_worker - 1 or \
                (mem_cap is not None and proc_status("VmData") * 1024 - size > mem_cap // 2)
            out.write(json.dumps({"__done__": True, "__retire__": retire}) + "\n")
            if retire:
                break
        out.flush()
    except BaseException:  # a harness error in the worker: the parent sees the job crash
        import traceback
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _tail(path: str, head: int = 2000, tail: int = 1000) -> str:
    """The start (a fatal error and the innermost frames) and the end of a log."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    if len(data) > head + tail:
        data = data[:head] + b"\n[...]\n" + data[-tail:]
    return data.decode("utf-8", "replace")


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}" if sig in signal.valid_signals() else f"signal {sig}"
    code = os.WEXITSTATUS(status)
    return f"exit code {code}" + (" (harness error in the worker: see the log)" if code == 70 else "")


def run_forked(jobs_iter: Iterable[Any], work: Callable[[Any, Send], Optional[str]], *, jobs: int = 2,
               timeout: float = 10.0, mem_cap: Optional[int] = None, log_dir: str, per_worker: int = 1,
               deadline: Optional[float] = None) -> Iterator[Finished]:
    """Run work(job, send) for every job (JSON-serialisable) in forked workers, `jobs` at a time;
    yields a Finished per job, in completion order. `mem_cap`: bytes of data a worker may add
    (RLIMIT_DATA). Past `deadline` (a time.monotonic() value) no new job starts."""
    source = iter(jobs_iter)
    workers: dict[int, _Worker] = {}  # by from_worker fd
    serial = 0
    retry: list = []  # jobs a worker that died between jobs never received

    def next_job():
        if retry:
            return True, retry.pop()
        if deadline is not None and time.monotonic() >= deadline:
            return False, None
        for job in source:
            return True, job
        return False, None

    def spawn() -> _Worker:
        nonlocal serial
        serial += 1
        log_path = os.path.join(log_dir, f"worker-{os.getpid()}-{serial}.log")
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for w in workers.values():
                os.close(w.to_worker)
                os.close(w.from_worker)
            os.close(job_w)
            os.close(res_r)
            _worker_main(work, job_r, res_w, log_path, mem_cap, per_worker)
        os.close(job_r)
        os.close(res_w)
        worker = _Worker(pid, job_w, res_r, log_path)
        workers[res_r] = worker
        return worker

    def give(worker: _Worker, job) -> None:
        try:
            os.write(worker.to_worker, (json.dumps(job) + "\n").encode())
        except BrokenPipeError:  # it died after its last job: the job goes to a fresh worker
            close(worker, kill=True)
            _remove(worker.log_path)
            retry.append(job)
            return
        worker.job, worker.has_job, worker.start, worker.messages = job, True, time.monotonic(), []

    def finish(worker: _Worker, status: str, detail: str = "") -> Finished:
        tail = _tail(worker.log_path) if status != "ok" else ""
        worker.has_job = False
        if worker.from_worker not in workers:  # closed: its log is no longer needed
            _remove(worker.log_path)
        return Finished(worker.job, status, worker.messages, time.monotonic() - worker.start, detail, tail)

    def close(worker: _Worker, kill: bool) -> int:
        if kill:
            os.kill(worker.pid, signal.SIGKILL)
        del workers[worker.from_worker]
        os.close(worker.to_worker)
        os.close(worker.from_worker)
        _, status = os.waitpid(worker.pid, 0)
        return status

    try:
        more = True
        while True:
            for worker in [w for w in workers.values() if not w.has_job]:
                more, job = next_job() if more else (False, None)
                if not more:
                    close(worker, kill=True)  # idle, and nothing left to do
                    _remove(worker.log_path)
                    continue
                give(worker, job)
            while (more or retry) and len(workers) < jobs:
                more, job = next_job()
                if more:
                    give(spawn(), job)
            if not workers:
                return
            wait = max(0.0, min(w.start + timeout for w in workers.values()) - time.monotonic())
            ready, _, _ = select.select(list(workers), [], [], wait)
            for fd in ready:
                worker = workers[fd]
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the worker died
                    status = close(worker, kill=False)
                    if worker.has_job:
                        yield finish(worker, "crash", _exit_text(status))
                    continue
                worker.buffer += chunk
                *lines, worker.buffer = worker.buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "__done__" not in message:
                        worker.messages.append(message)
                        continue
                    if message["__retire__"]:
                        close(worker, kill=False)
                    yield finish(worker, "ok")
            now = time.monotonic()
            for worker in list(workers.values()):
                if worker.has_job and now - worker.start >= timeout:
                    close(worker, kill=True)
                    yield finish(worker, "hang", f"no result after {timeout:g} s (killed)")
    finally:
        for worker in list(workers.values()):
            close(worker, kill=True)
            _remove(worker.log_path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
