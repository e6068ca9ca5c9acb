"""Bytes of weight a call streams: the memory-bound cost at m=1, and the bytes-ratio ceiling."""
from __future__ import annotations

from .. import registry


def bytes_read(weight, path: str) -> int:
    """Weight bytes an op call on `path` reads: the dense weight when the path expands to dense
    (CUDA, large m), else what the packed layout says it streams on that path."""
    if path == "dense_expand":
        return weight.dense_nbytes()
    return weight.packed.bytes_read(weight.nnz, path)


def bytes_read_at(weight, m: int, **op_options) -> int:
    """bytes_read on the path the weight's registered op takes for m tokens."""
    return bytes_read(weight, registry.for_weight(weight).path(weight, m, **op_options))
