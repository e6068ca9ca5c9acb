"""SparseGPT one-shot pruning (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot"): prune columns left to right and, after each, update the not-yet-
processed weights of the row with the inverse-Hessian (H = 2 X^T X over calibration inputs) so the
layer's output on the calibration data changes as little as possible (Optimal Brain Surgeon).
Masks are chosen adaptively per block of columns (unstructured) or per N:M group.
By default the Hessians come from one pass over the unpruned model; sequential=True runs the
paper's layer-by-layer procedure instead."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..nn.linear_like import is_hf_conv1d
from .calibration import Forward, collect_inputs, sequential_inputs
from .masks import PruningMasks
from .scores import check_sparsity
from .targets import LayerFilter, prunable_layers, rows_view


class HessianSums:
    """Running X^T X and token counts per layer; hessian(name) = 2/N * X^T X (float64 [in, in])."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        x = x.double()
        self.sums[name] = x.t() @ x + self.sums.get(name, 0)
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]

    def hessian(self, name: str) -> torch.Tensor:
        return 2.0 * self.sums[name] / max(1, self.counts[name])


def input_hessians(model: nn.Module, batches: Iterable, forward: Forward = None, filter: LayerFilter = None,
                   progress: bool = False) -> dict[str, torch.Tensor]:
    """H = 2/N * X^T X (float64, [in, in]) over the N calibration tokens of every Linear-like layer."""
    layers = prunable_layers(model, filter, linear_only=True)
    sums = HessianSums()
    collect_inputs(model, layers, batches, sums.add, forward, progress, desc="sparsegpt calibration")
    return {name: sums.hessian(name) for name in layers}


# round_column(col, values [rows]) -> values on a quantization grid (zeros must stay zero)
ColumnRounder = Callable[[int, torch.Tensor], torch.Tensor]


def sparsegpt_layer(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    n_m: Optional[tuple[int, int]] = None, block_size: int = 128,
                    damping: float = 0.01, round_column: Optional[ColumnRounder] = None,
                    mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned and updated weight, keep-mask) for one [out, in] weight. Damping adds
    damping * mean(diag H) to the diagonal, as the paper does, so H stays invertible.

    round_column (the paper's joint sparsification + quantization, sec. 3.5): each kept column is
    rounded with it right after its mask is known, and its rounding error is spread over the later
    columns through H^-1 exactly like the pruning error (GPTQ/OBQ). Called once per column, in
    order, with float64 values on the weight's device.

    mask: a fixed keep-mask (bool [out, in]) to use instead of choosing one (sparsity and n_m are
    then ignored); e.g. a float pass's mask, so that a rounding pass prunes the same weights."""
    rows, cols = weight.shape
    w = weight.detach().double().clone()
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0  # inputs never active: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damping * float(torch.diagonal(h).mean()))
    try:
        h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as error:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"Hessian not positive definite even after damping={damping}; raise damping") from error
    choose = mask is None
    if choose:
        mask = torch.ones(rows, cols, dtype=torch.bool)
    elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
        raise ValueError(f"mask must be a bool tensor of the weight's shape {tuple(weight.shape)}")
    else:
        mask = mask.cpu().clone()
    n, m = n_m if n_m is not None else (0, 0)
    if n_m is not None and choose:  # an N:M group must not straddle two blocks
        block_size = -(-block_size // m) * m
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        h_block = h_inv[start:end, start:end]
        diag = torch.diagonal(h_block)
        errors = torch.zeros_like(block)
        if n_m is None and choose:  # OBS saliency w^2 / [H^-1]_jj^2, lowest `sparsity` of the block pruned
            saliency = block ** 2 / diag[None, :] ** 2
            prune = math.floor(sparsity * saliency.numel())
            if prune:
                order = torch.sort(saliency.flatten(), stable=True).indices[:prune]
                block_mask = torch.ones(saliency.numel(), dtype=torch.bool)
                block_mask[order] = False
                mask[:, start:end] = block_mask.view(rows, end - start)
        for j in range(end - start):
            col = start + j
            if n_m is not None and choose and (col % m) == 0:
                width = min(m, cols - col)
                group = block[:, j:j + width] ** 2 / diag[None, j:j + width] ** 2
                drop = max(0, width - n)
                if drop:
                    lowest = torch.sort(group, dim=1, stable=True).indices[:, :drop]
                    mask[:, col:col + width].scatter_(1, lowest, False)
            kept = block[:, j] * mask[:, col]
            if round_column is not None:
                kept = round_column(col, kept)
            err = (block[:, j] - kept) / diag[j]
            block[:, j:] -= err[:, None] * h_block[j, j:][None, :]
            block[:, j] = kept
            errors[:, j] = err
        w[:, start:end] = block
        w[:, end:] -= errors @ h_inv[start:end, end:]
    w *= mask
    return w.to(weight.dtype), mask


def check_sparsegpt_options(sparsity: float, n_m: Optional[tuple[int, int]], block_size: int,
                            damping: float) -> None:
    """ValueError for arguments sparsegpt_layer cannot run with."""
    if n_m is None:
        check_sparsity(sparsity)
    elif not (isinstance(n_m, tuple) and len(n_m) == 2 and all(isinstance(v, int) for v in n_m)
              and 0 <= n_m[0] <= n_m[1] and n_m[1] >= 1):
        raise ValueError(f"n_m must be a tuple (n, m) of integers with 0 <= n <= m, got {n_m!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping!r}")


def for_each_hessian(model: nn.Module, batches: Iterable, visit: Callable[[str, nn.Module, torch.Tensor], None],
                     forward: Forward = None, filter: LayerFilter = None, sequential: bool = False,
                     progress: bool = False) -> None:
    """visit(name, module, H) for every Linear-like layer: H from one pass over the unchanged model,
    or (sequential=True) group by group in execution order from the inputs the model as changed by
    the earlier visits produces."""
    layers = prunable_layers(model, filter, linear_only=True)
    if not sequential:
        for name, hessian in input_hessians(model, batches, forward, filter, progress).items():
            visit(name, layers[name], hessian)
        return
    sums = HessianSums()

    def visit_group(names: list[str]) -> None:
        for name in names:
            visit(name, layers[name], sums.hessian(name))

    sequential_inputs(model, layers, batches, forward, sums.add, visit_group, progress)


def set_rows(module: nn.Module, rows: torch.Tensor) -> None:
    """Copy an [out, in] weight into a Linear-like layer (a Conv1D stores it transposed)."""
    with torch.no_grad():
        module.weight.copy_(rows.t() if is_hf_conv1d(module) else rows)


def prune_sparsegpt(model: nn.Module, batches: Iterable, sparsity: float = 0.5, forward: Forward = None,
                    filter: LayerFilter = None, n_m: Optional[tuple[int, int]] = None, block_size: int = 128,
                    damping: float = 0.01, sequential: bool = False, progress: bool = False) -> PruningMasks:
    """SparseGPT-prune every Linear-like layer in place (weights are pruned AND updated); returns the
    attached masks (.finish("csr"/"2:4") swaps in sparse layers).

    sequential=True (the paper's procedure) prunes layer group by layer group in execution order,
    each on the Hessian of the inputs the model pruned so far produces: later layers compensate
    for the error of earlier ones. It costs one calibration pass per group."""
    check_sparsegpt_options(sparsity, n_m, block_size, damping)
    masks = {}

    def prune_layer(name: str, module: nn.Module, hessian: torch.Tensor) -> None:
        weight = rows_view(module, module.weight.detach())
        pruned, keep = sparsegpt_layer(weight, hessian, sparsity, n_m, block_size, damping)
        set_rows(module, pruned)
        masks[name] = keep.t().contiguous() if is_hf_conv1d(module) else keep

    for_each_hessian(model, batches, prune_layer, forward, filter, sequential, progress)
    return PruningMasks(model, masks)
