"""Drop-in layers that run on sparseinfer kernels (the model-level swap, sparsify, lives in
sparseinfer.swap, above the registry of formats that lists these layers)."""
from .csr_linear import CSRLinear
from .int8_linear import Int8Linear
from .lut4_linear import CodebookLinear, Int4Linear
from .sparse24_linear import Sparse24Linear

__all__ = ["CSRLinear", "Int8Linear", "Int4Linear", "CodebookLinear", "Sparse24Linear"]
