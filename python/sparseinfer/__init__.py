"""sparseinfer: sparse and low-precision inference kernels for PyTorch models."""
from __future__ import annotations

from ._native import _C, cuda_built
from .runtime import (build_info, cpu_features, cpu_isa, cuda_build_info, set_cpu_isa,
                      set_threading_backend, threading_backend)
from . import ops, reference, formats, nn, registry, compress, checkpoint
from .checkpoint import CheckpointError, inspect, load, save
from .formats import CSR, Codebook, CsrInt8, Int4, Int8, Sparse24, Sparse24Int8
from .nn import CodebookLinear, CSRLinear, CsrInt8Linear, Int4Linear, Int8Linear, Sparse24Int8Linear, Sparse24Linear
from .swap import LayerReport, SparsifyReport, sparsify
from .generation import generate
from . import distributed

__version__ = _C.build_info()["version"]

__all__ = [
    "CSR", "CSRLinear", "Int8", "Int8Linear", "Int4", "Int4Linear", "Codebook", "CodebookLinear", "Sparse24", "Sparse24Linear",
    "CsrInt8", "CsrInt8Linear", "Sparse24Int8", "Sparse24Int8Linear", "sparsify", "SparsifyReport",
    "LayerReport", "generate", "ops", "reference", "formats", "nn", "registry", "compress", "checkpoint", "save", "load",
    "inspect", "CheckpointError",
    "cpu_features", "build_info", "set_cpu_isa", "cpu_isa", "cuda_built", "cuda_build_info",
    "threading_backend", "set_threading_backend", "distributed",
]
