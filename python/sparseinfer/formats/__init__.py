"""Weight formats: pack from dense, unpack to dense, validate untrusted data."""
from .codebook import Codebook
from .csr import CSR
from .errors import FormatError
from .int4 import Int4
from .int8 import Int8
from .sparse24 import Not24Error, Sparse24
from .sparse_int8 import CsrInt8, Sparse24Int8, SparseInt8

__all__ = ["CSR", "Int8", "Int4", "Codebook", "Sparse24", "CsrInt8", "Sparse24Int8", "SparseInt8", "FormatError", "Not24Error"]
