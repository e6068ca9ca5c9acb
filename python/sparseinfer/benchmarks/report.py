"""What every benchmark writes: the machine it ran on, a plain-text table and a JSON document."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict
from typing import Any, Callable, Sequence

import torch

from ..runtime import build_info, cuda_build_info


def machine_info() -> dict:
    """CPU, threads, versions and the sparseinfer build (ISA tiers) of this run."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "sparseinfer": build_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def gpu_info() -> dict:
    """The current CUDA device and the CUDA build of this run."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "multiprocessors": props.multi_processor_count,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "torch_cuda": torch.version.cuda,
            "sparseinfer_cuda": cuda_build_info()}


# A table column: (header, width, cell(row) -> text). Cells that do not apply print "-".
Column = tuple[str, int, Callable[[Any], str]]


def table(rows: Sequence[Any], columns: Sequence[Column]) -> str:
    head = " ".join(f"{name:>{width}s}" for name, width, _ in columns)
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(" ".join(f"{cell(row):>{width}s}" for _, width, cell in columns))
    return "\n".join(lines)


def results_json(results: Sequence[Any], machine: dict | None = None, **meta) -> dict:
    """{**meta, machine, results}: dataclass results as dicts."""
    return {**meta, "machine": machine or machine_info(), "results": [asdict(r) for r in results]}
