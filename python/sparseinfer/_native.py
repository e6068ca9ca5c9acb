"""Loads the native module. A failed import is an error, never a silent fallback."""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "sparseinfer's native module (sparseinfer._C) failed to load: "
        f"{exc}. Reinstall with `pip install .` from the repository root."
    ) from exc

# Codes shared with csrc/include/sparseinfer/dtype.h (enum class DType).
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
FLOAT_DTYPES = tuple(DTYPE_CODES)

PANEL_COLS = _C.build_info()["panel_cols"]
ROW_BLOCK = _C.build_info()["row_block"]
VALUES_PAD = _C.build_info()["values_pad"]
SPARSE24_CHUNK_COLS = _C.build_info()["sparse24_chunk_cols"]

# The CUDA module is optional: built only where CMake found nvcc (see CMakeLists.txt).
try:
    from . import _cuda  # noqa: F401
except ImportError:  # pragma: no cover - depends on the build machine
    _cuda = None


def cuda_built() -> bool:
    """True when this install carries the CUDA kernels (sparseinfer._cuda)."""
    return _cuda is not None


def require_cuda(what: str) -> None:
    """Raise a clear error when CUDA work is asked of an install or machine that cannot do it."""
    if _cuda is None:
        raise RuntimeError(f"{what}: this sparseinfer build has no CUDA module (no nvcc was found "
                           "at build time; reinstall with nvcc on PATH or -DSPARSEINFER_CUDA=ON)")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what}: torch sees no CUDA device")
