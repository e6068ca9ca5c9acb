"""Gradual pruning during training with the cubic sparsity ramp of Zhu & Gupta 2017 ("To prune, or
not to prune"): s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^3, re-pruning every
`frequency` optimizer steps. Call `step()` after each optimizer step of any training loop."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .magnitude import magnitude_scores
from .masks import PruningMasks
from .scores import SCOPES, check_sparsity, masks_from_scores
from .targets import LayerFilter, prunable_layers

ScoreFn = Callable[[nn.Module], dict[str, torch.Tensor]]


class GradualPruner:
    """Raises sparsity from `initial_sparsity` at `start_step` to `final_sparsity` at `end_step`.

    importance(model) -> {layer name: scores} decides what is pruned at each update (default |W|;
    pruned weights are zero, so magnitude never revives them). Masks are held between updates by
    PruningMasks, so they survive optimizer steps. `finish(format)` ends with our sparse layers."""

    def __init__(self, model: nn.Module, final_sparsity: float, end_step: int, start_step: int = 0,
                 frequency: int = 10, initial_sparsity: float = 0.0, scope: str = "layer",
                 filter: LayerFilter = None, importance: Optional[ScoreFn] = None):
        check_sparsity(final_sparsity, "final_sparsity")
        check_sparsity(initial_sparsity, "initial_sparsity")
        if initial_sparsity > final_sparsity:
            raise ValueError(f"initial_sparsity {initial_sparsity} exceeds final_sparsity {final_sparsity}")
        for arg, value in (("end_step", end_step), ("start_step", start_step), ("frequency", frequency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{arg} must be a non-negative integer, got {value!r}")
        if frequency < 1 or end_step <= start_step:
            raise ValueError(f"need frequency >= 1 and end_step > start_step, got frequency={frequency}, "
                             f"start_step={start_step}, end_step={end_step}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.layers = prunable_layers(model, filter)
        self.model = model
        self.final_sparsity = float(final_sparsity)
        self.initial_sparsity = float(initial_sparsity)
        self.start_step, self.end_step, self.frequency = start_step, end_step, frequency
        self.scope = scope
        self.importance = importance or (lambda m: magnitude_scores(m, filter))
        self.steps_done = 0
        self.masks: Optional[PruningMasks] = None
        self.current_sparsity = 0.0
        if start_step == 0:
            self._prune(self.sparsity_at(0))

    def sparsity_at(self, step: int) -> float:
        """Target sparsity after `step` optimizer steps (the cubic ramp, held flat outside it)."""
        if step < self.start_step:
            return 0.0
        progress = min(1.0, (step - self.start_step) / (self.end_step - self.start_step))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3

    def step(self, *_ignored) -> None:
        """Count one optimizer step and re-zero pruned weights; on schedule, re-prune to the ramp's
        sparsity. Call it after optimizer.step() (it fits distill(..., on_step=pruner.step))."""
        self.steps_done += 1
        t = self.steps_done
        due = (t - self.start_step) % self.frequency == 0 or t == self.end_step
        if self.start_step <= t <= self.end_step and due:
            self._prune(self.sparsity_at(t))
        elif self.masks is not None:
            self.masks.apply()  # momentum may have moved pruned weights in this optimizer step

    def _prune(self, sparsity: float) -> None:
        if sparsity <= 0.0 and self.masks is None:
            return
        scores = {name: s for name, s in self.importance(self.model).items() if name in self.layers}
        masks = masks_from_scores(scores, sparsity, self.scope, modules=self.layers)
        if self.masks is None:
            self.masks = PruningMasks(self.model, masks)
        else:
            self.masks.update(masks)
        self.current_sparsity = sparsity

    def finish(self, format: Optional[str] = "csr", **options):
        """Prune to the final sparsity (if the loop stopped early), drop hooks, swap in sparse layers."""
        if self.current_sparsity < self.final_sparsity:
            self._prune(self.final_sparsity)
        return self.masks.finish(format, **options)
