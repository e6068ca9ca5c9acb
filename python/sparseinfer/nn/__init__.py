"""Drop-in layers that run on sparseinfer kernels (the model-level swap, sparsify, lives in
sparseinfer.swap, above the registry of formats that lists these layers)."""
from .csr_linear import CSRLinear
from .int8_linear import Int8Linear
from .lut4_linear import CodebookLinear, Int4Linear
from .sparse24_linear import Sparse24Linear
from .sparse_int8_linear import CsrInt8Linear, Sparse24Int8Linear

__all__ = ["CSRLinear", "Int8Linear", "Int4Linear", "CodebookLinear", "Sparse24Linear", "CsrInt8Linear",
           "Sparse24Int8Linear"]
