"""Every compression method as one recipe: (task, trained dense model) -> compressed model + what
was done. Each recipe works on its own deep copy, so all rows start from the same dense weights."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .. import compress
from ..nn.linear_like import is_linear_like
from .tasks import Task, fit


@dataclass
class Compressed:
    model: nn.Module
    setting: str    # sparsity / bits / rank, as shown in the table
    # bytes of the model once its weights are packed, for recipes that leave them fake-quantized in
    # float (int4 and k-means codebooks, until their kernels land); None: measure the state_dict
    size_bytes: Optional[int] = None


Recipe = Callable[[Task, nn.Module], Compressed]
FINETUNE_LR_SCALE = 0.25  # finetuning uses a quarter of the training learning rate


def not_head(name: str, module: nn.Module) -> bool:
    """LM recipes keep the output head dense (as Wanda and SparseGPT do)."""
    return name != "lm_head"


def linear_only(name: str, module: nn.Module) -> bool:
    """Digits recipes compress the Linear layers (our sparse and int8 layers replace Linears)."""
    return is_linear_like(module)


def _finetune(task: Task, model: nn.Module, steps: int, on_step=None) -> None:
    fit(model, task.train_batches(steps, 7), task.loss, task.lr * FINETUNE_LR_SCALE, on_step=on_step)


def _pct(masks) -> str:
    return f"{100 * masks.sparsity()['total']:.0f}% of pruned layers"


def dense(task, model):
    return Compressed(model, "fp32")


def magnitude(sparsity: float, scope: str = "layer", lm: bool = False) -> Recipe:
    def run(task, model):
        masks = compress.prune_magnitude(model, sparsity, scope=scope, filter=not_head if lm else linear_only)
        masks.finish("csr")
        return Compressed(model, f"{sparsity:.0%} unstructured ({scope})")
    return run


def n_m_finetune(steps: int) -> Recipe:
    def run(task, model):
        masks = compress.prune_magnitude(model, 0.0, n_m=(2, 4), filter=linear_only)
        if steps:
            _finetune(task, model, steps)
        masks.finish("2:4")
        return Compressed(model, "2:4" + (f", {steps} ft steps" if steps else ""))
    return run


def gradual_distill(sparsity: float, steps: int) -> Recipe:
    """Zhu & Gupta cubic ramp over the first 70% of the steps, student distilled from the dense model."""
    def run(task, model):
        teacher = copy.deepcopy(model).eval()
        pruner = compress.GradualPruner(model, sparsity, end_step=int(0.7 * steps), frequency=max(1, steps // 50),
                                        filter=linear_only)
        compress.distill(model, teacher, task.train_batches(steps, 11), lr=task.lr * FINETUNE_LR_SCALE,
                         T=2.0, alpha=0.7, forward=task.logits, labels=task.labels, on_step=pruner.step)
        pruner.finish("csr")
        return Compressed(model, f"{sparsity:.0%} unstructured, gradual + KD, {steps} steps")
    return run


def taylor(sparsity: float) -> Recipe:
    def run(task, model):
        masks = compress.prune_taylor(model, task.train_batches(8, 5), task.loss, sparsity, filter=linear_only)
        masks.finish("csr")
        return Compressed(model, f"{sparsity:.0%} unstructured, one-shot")
    return run


def wanda(sparsity: float, n_m=None, lm: bool = False, scope: str = "row") -> Recipe:
    def run(task, model):
        masks = compress.prune_wanda(model, task.calibration(16), sparsity, n_m=n_m, scope=scope,
                                     filter=not_head if lm else linear_only)
        masks.finish("2:4" if n_m else "csr")
        return Compressed(model, "2:4, one-shot" if n_m else f"{sparsity:.0%} unstructured ({scope}), one-shot")
    return run


def sparsegpt(sparsity: float, n_m=None, lm: bool = False) -> Recipe:
    def run(task, model):
        masks = compress.prune_sparsegpt(model, task.calibration(16), sparsity, n_m=n_m,
                                         filter=not_head if lm else linear_only)
        masks.finish("2:4" if n_m else "csr")
        return Compressed(model, "2:4, one-shot" if n_m else f"{sparsity:.0%} unstructured, one-shot")
    return run


def low_rank(energy: float, finetune_steps: int = 0, lm: bool = False) -> Recipe:
    def run(task, model):
        report = compress.low_rank(model, energy=energy, filter=not_head if lm else None)
        if finetune_steps:
            _finetune(task, model, finetune_steps)
        ratio = report.params_after / max(1, report.params_before)
        note = f", {finetune_steps} ft steps" if finetune_steps else ""
        return Compressed(model, f"SVD {energy:.0%} energy, {ratio:.0%} of factorised params{note}")
    return run


def head_pruning(amount: float, finetune_steps: int) -> Recipe:
    """Michel et al. gradient head importance, lowest-scoring heads removed, then a short finetune."""
    def run(task, model):
        from ..compress import heads
        scores = heads.head_importance(model, task.train_batches(8, 5), task.loss)
        report = heads.prune_heads_by_importance(model, scores, amount)
        if finetune_steps:
            _finetune(task, model, finetune_steps)
        total = sum(report.heads_before.values())
        return Compressed(model, f"{report.heads_removed} of {total} heads removed, {finetune_steps} ft steps")
    return run


def layer_dropping(count: int, finetune_steps: int) -> Recipe:
    """Drop the `count` blocks whose removal raises the loss least, then a short finetune."""
    def run(task, model):
        from ..compress import layer_drop
        scores = layer_drop.layer_importance(model, task.train_batches(8, 5), task.loss, method="loss")
        drop = scores.argsort()[:count].tolist()
        layer_drop.drop_layers(model, drop)
        if finetune_steps:
            _finetune(task, model, finetune_steps)
        return Compressed(model, f"blocks {sorted(drop)} of {len(scores)} dropped, {finetune_steps} ft steps")
    return run


def lm_extras(steps: int) -> dict[str, Recipe]:
    return {
        **quantization_recipes(steps),
        "heads -25%": head_pruning(0.25, steps),
        "drop 1 block": layer_dropping(1, steps),
        "low-rank": low_rank(0.9, steps, lm=True),
    }


def ptq(act: str, observer: str = "output_mse") -> Recipe:
    def run(task, model):
        from ..compress import quant
        quant.quantize_ptq(model, task.calibration(8), act=act, weight_observer=observer)
        return Compressed(model, f"int8 weights ({observer})" + (", int8 activations" if act == "dynamic" else ""))
    return run


def qat(steps: int) -> Recipe:
    def run(task, model):
        from ..compress import quant
        quant.prepare_qat(model, act="dynamic")
        _finetune(task, model, steps)
        quant.convert_qat(model)
        return Compressed(model, f"int8 weights + activations, {steps} QAT steps")
    return run


def quantization_recipes(steps: int) -> dict[str, Recipe]:
    return {"int8 PTQ W8A8": ptq("dynamic"), "int8 PTQ weight-only": ptq("none"), "int8 QAT W8A8": qat(steps)}


def channels(amount: float, method: str, finetune_steps: int, slimming: float = 0.0) -> Recipe:
    """Structured pruning that physically shrinks layers: L1-norm filters (Li et al.) or BN scales
    (network slimming: first `finetune_steps` with the L1 penalty on BN scales, then prune)."""
    def run(task, model):
        from ..compress import structured
        if slimming:
            loss = lambda mdl, batch: task.loss(mdl, batch) + structured.slimming_penalty(mdl, slimming)
            fit(model, task.train_batches(finetune_steps, 3), loss, task.lr * FINETUNE_LR_SCALE)
        example = task.timing_input[:2]
        smaller, report = structured.prune_channels(model, amount, example, method=method)
        if finetune_steps:
            _finetune(task, smaller, finetune_steps)
        before = sum(p.numel() for p in model.parameters())
        after = sum(p.numel() for p in smaller.parameters())
        note = ", L1 on BN scales first" if slimming else ""
        return Compressed(smaller, f"{amount:.0%} channels ({method}{note}), {after / before:.0%} params, "
                                   f"{finetune_steps} ft steps")
    return run


def structured_recipes(task: Task, steps: int) -> dict[str, Recipe]:
    recipes = {"channels l1 50%": channels(0.5, "l1", steps)}
    if task.timing_input.dim() == 4:  # the CNN has BatchNorm
        recipes["slimming 50%"] = channels(0.5, "bn_scale", steps, slimming=1e-4)
    return recipes


# ------------------------------------------------------------------ 4-bit: uniform vs k-means codebooks
# These recipes leave the weights fake-quantized in the model's float dtype (the numbers the int4 and
# codebook formats hold); the size column is the packed size: 4-bit values plus fp16 scales (and
# 4-bit zero points when asymmetric) or fp16 codebook tables, the rest of the state_dict as it is.

def _targets(model: nn.Module, lm: bool) -> dict[str, nn.Module]:
    keep = not_head if lm else linear_only
    return {name: mod for name, mod in model.named_modules() if is_linear_like(mod) and keep(name, mod)}


def _packed_size(model: nn.Module, layers: dict[str, nn.Module], packed_bits: float) -> int:
    from .measure import state_bytes
    dense = sum(mod.weight.nbytes for mod in layers.values())
    return int(state_bytes(model) - dense + packed_bits / 8)


def int4(group_size: Optional[int], symmetric: bool = True, lm: bool = False) -> Recipe:
    """Uniform 4-bit weights with min-max scales per output channel or per group of input columns,
    symmetric or with a zero point: the numbers of sparseinfer's int4 format (formats/int4.py,
    compressed-tensors' 4-bit quantization), dequantized into the float weights."""
    def run(task, model):
        from ..formats.int4 import Int4
        layers = _targets(model, lm)
        bits = 0.0
        for mod in layers.values():
            weight = mod.weight.detach()
            rows, cols = weight.shape
            packed = Int4.from_dense(weight, group_size, symmetric=symmetric)
            groups = 1 if group_size is None or group_size >= cols else -(-cols // group_size)
            bits += 4 * weight.numel() + (16 + (0 if symmetric else 4)) * rows * groups  # fp16 scales, 4-bit zeros
            with torch.no_grad():
                mod.weight.copy_(packed.to_dense(weight.dtype))
        numel = sum(mod.weight.numel() for mod in layers.values())
        where = "per channel" if group_size is None else f"per group {group_size}"
        kind = "sym" if symmetric else "asym"
        return Compressed(model, f"int4 {kind} {where}; {bits / numel:.2f} b/w", _packed_size(model, layers, bits))
    return run


def kmeans(finetune_steps: int = 0, sparsity: float = 0.0, lm: bool = False, bits: int = 4) -> Recipe:
    """Deep Compression's weight sharing: one k-means table of 2^bits values per output channel
    (compress.cluster_weights), optionally after 50% magnitude pruning (zeros kept: entry 0 of every
    table) and followed by `finetune_steps` of centroid finetuning (compress.finetune_centroids)."""
    def run(task, model):
        keep = not_head if lm else linear_only
        note = ""
        if sparsity:
            compress.prune_magnitude(model, sparsity, filter=keep).remove()
            note = f"{sparsity:.0%} magnitude + "
        result = compress.cluster_weights(model, bits=bits, per="channel", filter=keep)
        if finetune_steps:
            result.finetune(model, task.train_batches(finetune_steps, 7), task.loss,
                            lr=task.lr * FINETUNE_LR_SCALE)
        layers = {name: model.get_submodule(name) for name in result.layers}
        ft = f", {finetune_steps} ft" if finetune_steps else ""
        setting = (f"{note}k-means {bits}b/ch{ft}; {result.runtime_bits_per_weight:.2f} b/w "
                   f"(DC {result.deep_compression_bits_per_weight:.2f})")
        return Compressed(model, setting, _packed_size(model, layers, 8 * result.runtime_bytes))
    return run


def weight_sharing_recipes(steps: int, lm: bool = False) -> dict[str, Recipe]:
    """4-bit uniform vs 4-bit k-means codebooks at the same index width (issue #20)."""
    return {
        "int4 g128": int4(128, lm=lm),
        "int4 channel": int4(None, lm=lm),
        "int4 asym channel": int4(None, symmetric=False, lm=lm),
        "kmeans 4b": kmeans(lm=lm),
        "kmeans 4b + ft": kmeans(steps, lm=lm),
        "50% + kmeans 4b": kmeans(sparsity=0.5, lm=lm),
    }
