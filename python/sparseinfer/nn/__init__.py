"""Drop-in layers that run on sparseinfer kernels, and the model-level swap."""
from .csr_linear import CSRLinear
from .sparsify import sparsify, SparsifyReport, LayerReport

__all__ = ["CSRLinear", "sparsify", "SparsifyReport", "LayerReport"]
