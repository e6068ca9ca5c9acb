"""Where the CUDA ops switch kernels, in one place (measured on an H100:
bench/results/cuda_path_sweep_h100.txt).

CSR: the row kernel up to CSR_CUDA_MAX_M tokens, else the dense weight is built on the device and
cuBLAS runs. 2:4 (fp16/bf16): the split-K tensor-core kernel up to S24_CUDA_SPLITK_MAX_M (read
from the CUDA build, whose dispatch uses the same constant), the tiled one above it; fp32 always
expands to dense (sparse tensor cores take 16-bit operands).
"""
from __future__ import annotations

import torch

from .._native import _cuda

CSR_CUDA_MAX_M = 32
S24_CUDA_SPLITK_MAX_M = _cuda.build_info()["s24_split_max_m"] if _cuda is not None else 64


def csr_cuda_path(m: int) -> str:
    return "rows" if m <= CSR_CUDA_MAX_M else "dense_expand"


def sparse24_cuda_path(dtype: torch.dtype, m: int) -> str:
    if dtype == torch.float32:
        return "dense_expand"
    return "mma_sp_splitk" if m <= S24_CUDA_SPLITK_MAX_M else "mma_sp_tiled"
