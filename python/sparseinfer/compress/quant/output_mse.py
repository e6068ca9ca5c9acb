"""Activation-aware weight clipping: choose each output channel's (or group's) int8 scale to
minimize the error of the layer OUTPUT on calibration inputs, not of the weight itself (the clip
search of AWQ, Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression
and Acceleration", sec. 3.3; "output MSE" calibration). The error is evaluated exactly from the
input statistics of calibration.py (G = X^T X and, for dynamic activations, the terms of the
kernel's per-token activation quantization error), so every calibration token counts at a cost
independent of their number.

Candidates: max|w| * f / qmax for shrink factors f from 1 (plain min/max) down to 0.5, as AWQ's
grid. Per channel the factor 1 is a candidate, so the calibration output error never exceeds
min/max's. With groups, each group is chosen on its own block of the statistics (as AWQ does).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .calibration import InputStats
from .weight_quant import num_groups

SHRINK_FACTORS = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0, 0.975, ..., 0.5


def _row_forms(a: torch.Tensor, matrix: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise bilinear forms a_j^T M b_j -> [rows]."""
    return ((a @ matrix) * b).sum(1)


def _blocks(stats: InputStats, cols: slice, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The statistics' diagonal blocks for input columns `cols`: (G,) or (G, C, H)."""
    mats = (stats.gram, stats.cross, stats.err_gram) if stats.dynamic else (stats.gram,)
    return tuple(m[cols, cols].to(dtype) for m in mats)


def _error_per_row(diff: torch.Tensor, deq: torch.Tensor, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Output squared error per output channel: d^T G d (+ 2 d^T C w' + w'^T H w')."""
    err = _row_forms(diff, blocks[0], diff)
    if len(blocks) == 3:
        err = err + 2 * _row_forms(diff, blocks[1], deq) + _row_forms(deq, blocks[2], deq)
    return err


def relative_output_error(weight: torch.Tensor, dequantized: torch.Tensor, bias: Optional[torch.Tensor],
                          stats: InputStats) -> float:
    """||Y' - Y||_F / ||Y||_F over the calibration tokens, Y = X W^T + b the float output and
    Y' = Q(X) W'^T + b the quantized layer's (float64 arithmetic). 0 for an all-zero output."""
    w = weight.detach().double()
    deq = dequantized.detach().double()
    err = float(_error_per_row(w - deq, deq, _blocks(stats, slice(None), torch.float64)).sum())
    energy = _row_forms(w, stats.gram, w)
    if bias is not None:
        b = bias.detach().double()
        energy = energy + 2 * b * (w @ stats.x_sum) + stats.tokens * b * b
    energy = float(energy.sum())
    return math.sqrt(max(err, 0.0) / energy) if energy > 0 else 0.0


def output_mse_scales(weight: torch.Tensor, group_size: Optional[int], stats: InputStats, qmax: int = 127,
                      shrink_factors: tuple[float, ...] = SHRINK_FACTORS) -> torch.Tensor:
    """Scales fp32 [out, groups] (rounded to the weight's dtype) minimizing each output
    channel's (group's) output squared error on the calibration statistics.

    Args:
        weight: float [out, in], CPU.
        group_size: None (per channel) or the Int8 group size.
        stats: the layer's InputStats (act="dynamic" statistics make the search see the kernel's
            activation quantization).
        qmax: largest integer magnitude (127 for int8).
        shrink_factors: candidate fractions of max|w|; include 1.0 to never do worse than min/max.
    """
    w = weight.detach().float()
    rows, cols = w.shape
    groups = num_groups(cols, group_size)
    width = cols if group_size is None else group_size
    best_scale = torch.zeros(rows, groups)
    for g in range(groups):
        span = slice(g * width, min(cols, (g + 1) * width))
        wg = w[:, span]
        absmax = wg.abs().amax(1, keepdim=True)
        blocks = _blocks(stats, span, torch.float32)  # fp32 suffices to rank candidates
        best_err = torch.full((rows,), float("inf"))
        for factor in shrink_factors:
            scale = (absmax * factor / qmax).to(weight.dtype).float()
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            deq = torch.round(wg / safe).clamp(-qmax, qmax) * scale
            err = _error_per_row(wg - deq, deq, blocks)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale[:, g] = torch.where(better, scale[:, 0], best_scale[:, g])
    return best_scale
