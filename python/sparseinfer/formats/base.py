"""What every packed weight format shares: shape, non-zero count and the kernel tensors."""
from __future__ import annotations

import torch

from typing import Callable

from .._native import FLOAT_DTYPES


def canonical_shape(shape, fail: Callable[[str, str], None]) -> tuple[int, int]:
    """(rows, cols) from a canonical ``shape`` (a sequence, or an int tensor [2] / [2, 1]);
    calls fail("shape", why) unless it holds two non-negative integers."""
    try:
        dims = shape.flatten().tolist() if isinstance(shape, torch.Tensor) else list(shape)
        rows, cols = (int(s) for s in dims)
    except (TypeError, ValueError):
        fail("shape", f"must be two integers, got {shape!r}")
    if rows < 0 or cols < 0:
        fail("shape", f"must be non-negative, got {(rows, cols)}")
    return rows, cols


class PackedWeight:
    """A [rows, cols] weight (rows = out_features) packed once for the kernels. Subclasses hold
    ``shape``, ``nnz`` and ``_p`` (a dataclass of kernel tensors with a ``values`` field)."""

    __slots__ = ("shape", "nnz", "_p")

    def __init__(self, shape: tuple[int, int], nnz: int, packed):
        self.shape = (int(shape[0]), int(shape[1]))
        self.nnz = int(nnz)
        self._p = packed

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._p.values.dtype

    @property
    def device(self) -> torch.device:
        return self._p.values.device

    @property
    def density(self) -> float:
        """Fraction of non-zeros in the dense weight."""
        return self.nnz / max(1, self.rows * self.cols)

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros in the dense weight."""
        return 1.0 - self.density

    @property
    def packed(self):
        """The kernel tensors (read-only by contract)."""
        return self._p

    def dense_nbytes(self) -> int:
        """Bytes of the same weight stored dense in the same dtype."""
        return self.rows * self.cols * self._p.values.element_size()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def _target(self, target, dtype, device) -> tuple[torch.dtype, torch.device]:
        """Normalise `.to(dtype | device, dtype=, device=)` arguments against this weight."""
        if isinstance(target, torch.dtype):
            dtype = target if dtype is None else dtype
        elif target is not None:
            device = target if device is None else device
        dtype = self.dtype if dtype is None else dtype
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
        device = self.device if device is None else torch.device(device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {device}")
        if device.type == "cuda":
            from .._native import require_cuda
            require_cuda(f"moving a {type(self).__name__} to {device}")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        return dtype, device

    @staticmethod
    def _checked_dense(weight) -> torch.Tensor:
        """A dense weight fit to pack: a 2-D float tensor, detached and on the CPU (packing runs
        there; from_dense moves the result back to the weight's device), else TypeError/ValueError."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
        if weight.dtype not in FLOAT_DTYPES:
            raise ValueError(f"weight dtype must be one of {FLOAT_DTYPES}, got {weight.dtype}")
        if weight.device.type not in ("cpu", "cuda"):
            raise ValueError(f"weight must be on the CPU or a CUDA device, got {weight.device}")
        return weight.detach().cpu()
