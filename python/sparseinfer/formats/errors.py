"""The error every format raises on malformed data."""
from typing import Optional


class FormatError(ValueError):
    """Format data is malformed (untrusted input rejected before any kernel sees it). `array`
    names the offending canonical array ("bitmask", "scale", ...) when there is one and `detail`
    the problem without the format/array prefix, so a checkpoint load can name the tensor."""

    def __init__(self, message: str, array: Optional[str] = None, detail: Optional[str] = None):
        super().__init__(message)
        self.array = array
        self.detail = detail if detail is not None else message
