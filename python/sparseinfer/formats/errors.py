"""The error every format raises on malformed data."""


class FormatError(ValueError):
    """Format data is malformed (untrusted input rejected before any kernel sees it)."""
