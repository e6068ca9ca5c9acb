"""Weight formats: pack from dense, unpack to dense, validate untrusted data."""
from .csr import CSR, FormatError

__all__ = ["CSR", "FormatError"]
