"""Pruned + int8 rows (compress.joint): one-shot SparseGPT with the rounding inside its sweep, Wanda /
magnitude followed by output-MSE PTQ, and gradual pruning + distillation + QAT.

The models keep float Linear layers holding exactly q * scale (exact zeros where pruned) and, for
W8A8, every compressed layer's input is fake-quantized per token as the int8 kernels do it
(compress.joint.fake_quantize_inputs): the rows measure the numbers a sparse-int8 kernel computes.
Their size is the packed size in the canonical compound layout (int8 non-zeros + bitmask + row
offsets, or the 2:4 half + bitmask, plus fp32 scales); their speed column is meaningless (dense fp32
math plus the activation rounding in Python)."""
from __future__ import annotations

import copy

from torch import nn

from ..compress import joint
from .methods import FINETUNE_LR_SCALE, Compressed, Recipe, _packed_size, linear_only, not_head
from .tasks import Task

W8A8 = "W8A8: w q*s, a fq/token"  # how the rows are evaluated, in their label


def packed_bits(result: joint.SparseQuantResult, scale_bytes: int = 4) -> int:
    """Bits of the compressed layers in the checkpoint's compound layout: sparse-bitmask (non-zero
    int8 values, bitmask, int64 row offsets) or sparse-24-bitmask (half the columns, bitmask), plus
    one scale per row and group in the model dtype."""
    total = 0
    for weight in result.weights.values():
        rows, cols = weight.q.shape
        values = rows * cols // 2 if result.structure == "2:4" else int((weight.q != 0).sum())
        offsets = 0 if result.structure == "2:4" else 8 * rows
        total += 8 * (values + rows * -(-cols // 8) + offsets + scale_bytes * weight.scale.numel())
    return total


def _finish(model: nn.Module, result: joint.SparseQuantResult, setting: str, act: str) -> Compressed:
    if act == "dynamic":
        joint.fake_quantize_inputs(model, result.weights)
    layers = {name: model.get_submodule(name) for name in result.weights}
    label = W8A8 if act == "dynamic" else "weight-only int8"
    return Compressed(model, f"{setting}; {label}", _packed_size(model, layers, packed_bits(result)))


def one_shot(structure: str, method: str = "sparsegpt", lm: bool = False, act: str = "dynamic") -> Recipe:
    """compress.sparsify_quantize on 16 calibration batches, the LM's output head left dense."""
    def run(task: Task, model: nn.Module) -> Compressed:
        result = joint.sparsify_quantize(model, task.calibration(16), structure=structure, method=method,
                                         act=act, filter=not_head if lm else linear_only)
        what = "2:4" if structure == "2:4" else f"{result.sparsity()['total']:.0%}"
        how = "joint" if method == "sparsegpt" else "+ oMSE PTQ"
        return _finish(model, result, f"{what} {method} {how}", act)
    return run


def gradual_qat(sparsity: float, steps: int) -> Recipe:
    """As the "gradual 90% + KD" row (same steps, ramp over 70% of them, lr, T, alpha), with the last
    30% of the steps QAT (W8A8 fake quantization) instead of float finetuning."""
    def run(task: Task, model: nn.Module) -> Compressed:
        teacher = copy.deepcopy(model).eval()
        result = joint.gradual_sparse_qat(model, teacher, task.train_batches(steps, 11), steps=steps,
                                          sparsity=sparsity, prune_steps=int(0.7 * steps),
                                          frequency=max(1, steps // 50), lr=task.lr * FINETUNE_LR_SCALE,
                                          T=2.0, alpha=0.7, forward=task.logits, labels=task.labels,
                                          filter=linear_only)
        qat_steps = steps - int(0.7 * steps)
        return _finish(model, result, f"{result.sparsity()['total']:.0%} grad+KD, QAT {qat_steps}/{steps}", "dynamic")
    return run


def sparse_int8_recipes(task: Task, long_steps: int) -> dict[str, Recipe]:
    """The rows; their float counterparts (same pruning without int8) are "sparsegpt",
    "sparsegpt 2:4", "wanda ..." and "gradual 90% + KD" in the same run."""
    lm = task.metric == "perplexity"
    recipes = {
        "50% + int8": one_shot("unstructured", lm=lm),
        "2:4 + int8": one_shot("2:4", lm=lm),
        "wanda 50% + int8": one_shot("unstructured", "wanda", lm=lm),
        "wanda 2:4 + int8": one_shot("2:4", "wanda", lm=lm),
        "magnitude 50% + int8": one_shot("unstructured", "magnitude", lm=lm),
    }
    if not lm:
        recipes["90% + int8 + KD"] = gradual_qat(0.9, long_steps)
    return recipes
