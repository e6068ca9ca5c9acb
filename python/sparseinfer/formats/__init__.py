"""Weight formats: pack from dense, unpack to dense, validate untrusted data."""
from .csr import CSR
from .errors import FormatError
from .sparse24 import Not24Error, Sparse24

__all__ = ["CSR", "Sparse24", "FormatError", "Not24Error"]
