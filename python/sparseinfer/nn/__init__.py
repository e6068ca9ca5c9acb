"""Drop-in layers that run on sparseinfer kernels, and the model-level swap."""
from .csr_linear import CSRLinear
from .int8_linear import Int8Linear
from .sparse24_linear import Sparse24Linear
from .sparsify import sparsify, SparsifyReport, LayerReport

__all__ = ["CSRLinear", "Int8Linear", "Sparse24Linear", "sparsify", "SparsifyReport", "LayerReport"]
