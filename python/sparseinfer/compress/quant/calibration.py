"""Calibration: run batches through a model and accumulate, per Linear layer, the second-order
statistics of its inputs that the layer's output error is a quadratic form of.

For a layer y = x W^T + b fed inputs X [n, in] and run as y' = Q(X) W'^T + b (Q = the kernel's
per-token int8 activation quantization for act="dynamic", the identity for act="none"), the
output error of output channel j is, with d = w_j - w'_j and E = X - Q(X),
``||X d + E w'_j||^2 = d^T G d + 2 d^T C w'_j + w'_j^T H w'_j`` where G = X^T X, C = X^T E,
H = E^T E. The same idea as GPTQ's / AWQ's use of X^T X (Frantar et al. 2022; Lin et al. 2023);
written in d and E, the sum has no cancellation of large terms. Memory: in_features^2 float64
per layer (three of them for act="dynamic").
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from ..calibration import InputCollector, run_batches
from .fake_quant import fake_quantize_per_token


class InputStats:
    """Running sums over every token a layer saw: n, sum of x, G, and (dynamic) C, H."""

    def __init__(self, in_features: int, dynamic: bool):
        self.dynamic = dynamic
        self.tokens = 0
        self.x_sum = torch.zeros(in_features, dtype=torch.float64)
        self.gram = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.cross = torch.zeros_like(self.gram) if dynamic else None
        self.err_gram = torch.zeros_like(self.gram) if dynamic else None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.x_sum.shape[0])
        if x.shape[0] == 0:
            return
        x64 = x.to(device="cpu", dtype=torch.float64)
        self.tokens += x.shape[0]
        self.x_sum += x64.sum(0)
        self.gram += x64.T @ x64
        if self.dynamic:
            err = x64 - fake_quantize_per_token(x.float()).to(device="cpu", dtype=torch.float64)
            self.cross += x64.T @ err
            self.err_gram += err.T @ err


def collect_input_stats(model: nn.Module, layers: dict[str, nn.Module], calibration, *, dynamic: bool,
                        forward: Optional[Callable[[nn.Module, Any], Any]] = None,
                        progress: bool = False) -> tuple[dict[str, InputStats], int]:
    """Run every batch of `calibration` through `model` (eval mode, no grad) and return
    ({layer name: InputStats}, number of batches). The model's train/eval flags are restored
    and the hooks removed even when a batch fails."""
    stats: dict[str, InputStats] = {}

    def add(name: str, x: torch.Tensor) -> None:
        if name not in stats:
            stats[name] = InputStats(x.shape[1], dynamic)
        stats[name].update(x)

    with InputCollector(layers, add):
        batches = run_batches(model, calibration, forward, progress, desc="calibrating", allow_empty=True)
    return stats, batches
