"""Plain-torch reference of every op: the test oracle. Slow and obviously correct."""
from __future__ import annotations

from typing import Optional

import torch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """y = x @ weight.T + bias computed in `compute_dtype`, returned in x's dtype."""
    y = x.to(compute_dtype) @ weight.to(compute_dtype).T
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y.to(x.dtype)


def csr_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
               compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Reference for ops.csr_linear: densify the CSR weight and run a plain matmul."""
    return linear(x, weight.to_dense(), bias, compute_dtype)


def sparse24_linear(x: torch.Tensor, weight, bias: Optional[torch.Tensor] = None,
                    compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Reference for ops.sparse24_linear: densify the 2:4 weight and run a plain matmul."""
    return linear(x, weight.to_dense(), bias, compute_dtype)
