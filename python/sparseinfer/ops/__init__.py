"""The op contract: every tensor is checked here before a pointer goes native.

One module per op, named for its format (``csr``, ``sparse24``, ``int8``): public function,
``torch.library`` custom ops with fake kernels, CPU and CUDA entries, path choice. Shared argument
checks live in ``checks``, CUDA path thresholds in ``cuda_paths``, and in ``autograd`` when a call
goes through its custom op (torch.compile, torch.jit.trace, autograd) and the backward every op
registers (dX = dY @ W with the frozen weight rebuilt by its ``<op>_dense`` custom op). Every
``*_path(weight, m, ...)`` names the kernel path a call would take.
"""
from ..formats.int8 import ACTS as INT8_ACTS
from .csr import csr_linear, csr_linear_path
from .cuda_paths import CSR_CUDA_MAX_M, S24_CUDA_SPLITK_MAX_M
from .int8 import int8_linear, int8_linear_path
from .lut4 import lut4_linear, lut4_linear_path
from .sparse24 import sparse24_linear, sparse24_linear_path
from .sparse_int8 import sparse_int8_linear, sparse_int8_linear_path

__all__ = ["csr_linear", "csr_linear_path", "sparse24_linear", "sparse24_linear_path",
           "int8_linear", "int8_linear_path", "lut4_linear", "lut4_linear_path", "sparse_int8_linear",
           "sparse_int8_linear_path", "INT8_ACTS", "CSR_CUDA_MAX_M", "S24_CUDA_SPLITK_MAX_M"]
