"""What this build contains, what the CPU supports and which kernel tier dispatch uses (the
SPARSEINFER_CPU_ISA override, set_cpu_isa / cpu_isa)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ._native import _C, _cuda

THREADING_BACKENDS = ("auto", "openmp", "pool")
if os.environ.get("SPARSEINFER_THREADING", "auto") not in THREADING_BACKENDS + ("",):
    raise ValueError(f"SPARSEINFER_THREADING must be one of {', '.join(THREADING_BACKENDS)}, "
                     f"got {os.environ['SPARSEINFER_THREADING']!r}")


def cuda_build_info() -> dict | None:
    """The CUDA module's build (SM targets, nvcc, layout constants), or None if not built."""
    return None if _cuda is None else dict(_cuda.build_info())


def cpu_features() -> dict:
    """CPU and OS features detected at import (cpuid + xgetbv)."""
    return dict(_C.cpu_features())


def build_info() -> dict:
    """What this build contains and what dispatch chose.

    Keys: version, compiler, compiled_isas, supported_isas (compiled and runnable here),
    best_isa, active_isa (after SPARSEINFER_CPU_ISA / set_cpu_isa), threads (pool size now).
    """
    info = dict(_C.build_info())
    info.update(
        compiled_isas=list(_C.compiled_isas()),
        supported_isas=list(_C.supported_isas()),
        best_isa=_C.best_isa(),
        active_isa=_C.active_isa(),
        thread_pool_size=_C.pool_size(),
        threading=_C.threading_backend(),
    )
    return info


def threading_backend() -> str:
    """Where the kernels' parallel regions run: "openmp:<library>" (the OpenMP team torch itself
    runs on, so torch's spinning threads take our tasks instead of starving a second pool) or
    "pool" (our own threads: no OpenMP runtime loaded, a forked child, or chosen)."""
    return _C.threading_backend()


def set_threading_backend(name: str) -> None:
    """Choose "openmp", "pool" or "auto" (default; the SPARSEINFER_THREADING variable, else
    openmp when torch's runtime is loaded). Takes effect at the next kernel call."""
    if name not in THREADING_BACKENDS:
        raise ValueError(f"threading backend must be 'auto', 'openmp' or 'pool', got {name!r}")
    _C.set_threading_backend(name)


def set_cpu_isa(name: str) -> None:
    """Force the CPU kernel tier: 'reference', 'avx2', 'avx512', 'avx512_vnni' or 'amx' (must be
    supported here; formats without int8 kernels run their avx512 kernels on the last two)."""
    _C.set_isa(name)


@contextlib.contextmanager
def cpu_isa(name: str) -> Iterator[None]:
    """Context manager form of set_cpu_isa; restores the previous tier on exit."""
    previous = _C.active_isa()
    _C.set_isa(name)
    try:
        yield
    finally:
        _C.set_isa(previous)
