"""Train (cached), compress with each recipe, measure, print one table and check the targets."""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch

from ..benchmarks.report import machine_info
from . import methods as m
from .measure import forward_seconds, state_bytes
from .sparse_int8 import sparse_int8_recipes
from .tasks import Task, char_lm_task, digits_cnn_task, digits_mlp_task


@dataclass
class Row:
    task: str
    method: str
    setting: str
    metric_name: str
    metric: float
    delta: float          # metric - dense metric (accuracy points, or perplexity)
    size_bytes: int
    size_ratio: float     # size / dense size
    speed_vs_dense: float  # dense forward time / this forward time (> 1 is faster)
    seconds: float        # time the recipe took (pruning, calibration, finetuning)


def recipes(task: Task, fast: bool) -> dict[str, m.Recipe]:
    """The methods applied to each task; fast=True shortens every finetune for tests."""
    steps = 60 if fast else 300
    long_steps = 400 if fast else 800
    if task.metric == "perplexity":
        return {
            "dense": m.dense,
            "magnitude (layer)": m.magnitude(0.5, lm=True),
            "wanda (layer)": m.wanda(0.5, lm=True, scope="layer"),
            "magnitude (row)": m.magnitude(0.5, scope="row", lm=True),
            "wanda (row)": m.wanda(0.5, lm=True),
            "sparsegpt": m.sparsegpt(0.5, lm=True),
            "wanda 2:4": m.wanda(0.0, n_m=(2, 4), lm=True),
            "sparsegpt 2:4": m.sparsegpt(0.0, n_m=(2, 4), lm=True),
            **m.lm_extras(steps),
            **m.weight_sharing_recipes(steps, lm=True),
            **sparse_int8_recipes(task, long_steps),
        }
    return {
        "dense": m.dense,
        **m.quantization_recipes(steps),
        "magnitude 50%": m.magnitude(0.5),
        "magnitude 90%": m.magnitude(0.9),
        "gradual 90% + KD": m.gradual_distill(0.9, long_steps),
        "taylor 70%": m.taylor(0.7),
        "wanda 50%": m.wanda(0.5),
        "sparsegpt 50%": m.sparsegpt(0.5),
        "sparsegpt 2:4": m.sparsegpt(0.0, n_m=(2, 4)),
        "2:4 one-shot": m.n_m_finetune(0),
        "2:4 + finetune": m.n_m_finetune(steps),
        "low-rank": m.low_rank(0.9, steps),
        **m.structured_recipes(task, steps),
        **m.weight_sharing_recipes(steps),
        **sparse_int8_recipes(task, long_steps),
    }


def run_task(task: Task, fast: bool = False, use_cache: bool = True, progress: bool = False,
             only: set[str] | None = None) -> list[Row]:
    torch.manual_seed(0)
    dense = task.trained(use_cache=use_cache, progress=progress)
    results, models = {}, {}
    for name, recipe in recipes(task, fast).items():
        if only and name not in only and name != "dense":
            continue
        torch.manual_seed(0)
        start = time.perf_counter()
        compressed = recipe(task, copy.deepcopy(dense))
        seconds = time.perf_counter() - start
        compressed.model.eval()
        results[name] = (compressed, seconds, task.evaluate(compressed.model))
        models[name] = compressed.model
    speed = forward_seconds(models, task.timing_input)
    base_metric, base_size = results["dense"][2], state_bytes(models["dense"])
    rows = []
    for name, (compressed, seconds, metric) in results.items():
        size = compressed.size_bytes if compressed.size_bytes is not None else state_bytes(compressed.model)
        rows.append(Row(task.name, name, compressed.setting, task.metric, metric, metric - base_metric, size,
                        size / base_size, speed["dense"] / speed[name], seconds))
    return rows


TASK_KEYS = ("mlp", "cnn", "lm")  # the CLI's names for default_tasks(), in order


def default_tasks(fast: bool = False) -> list[Task]:
    if fast:
        return [digits_mlp_task(hidden=128, train_steps=400), digits_cnn_task(channels=8, train_steps=300),
                char_lm_task(hidden=64, layers=2, train_steps=300, max_chars=200_000, eval_windows=32)]
    return [digits_mlp_task(), digits_cnn_task(), char_lm_task()]


def format_table(rows: list[Row]) -> str:
    header = (f"{'task':18s} {'method':22s} {'setting':56s} {'metric':>10s} {'delta':>7s} "
              f"{'size KB':>8s} {'size':>6s} {'speed':>6s}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.task:18s} {r.method:22s} {r.setting[:56]:56s} {r.metric:10.2f} {r.delta:+7.2f} "
                     f"{r.size_bytes / 1024:8.1f} {r.size_ratio:5.2f}x {r.speed_vs_dense:5.2f}x")
    lines.append("metric: accuracy % (digits) or perplexity (char LM); delta vs dense; size = state_dict "
                 "bytes vs dense; speed = dense forward time / this forward time (same run);\n"
                 "unstructured, 2:4 and int8 rows compress the Linear layers (the CNN's convolutions stay dense; "
                 "the LM's output head stays dense when pruning); ft = finetune;\n"
                 "int4 and k-means rows hold fake-quantized float weights: their size is the packed size "
                 "(4-bit values + fp16 scales or tables), b/w = bits per weight (DC: Deep Compression's "
                 "Huffman-coded storage);\n"
                 "'+ int8' rows (pruned + int8) hold q*scale float weights with int8-rounded inputs per token "
                 "(W8A8 as the kernels compute it): size = sparse-int8 packed size, speed not meaningful")
    return "\n".join(lines)


def check_targets(rows: list[Row]) -> list[tuple[str, bool, str]]:
    """The issue's targets as (claim, met, figures)."""
    found = {(r.task, r.method): r for r in rows}
    checks = []
    for task in sorted({r.task for r in rows if r.metric_name == "accuracy %"}):
        for method, limit in (("int8 PTQ W8A8", 0.5), ("2:4 + finetune", 1.0), ("gradual 90% + KD", 2.0),
                              ("90% + int8 + KD", 1.0)):
            row = found.get((task, method))
            if row is not None:
                checks.append((f"{task}: {method} drops <= {limit} pt", -row.delta <= limit,
                               f"{row.delta:+.2f} pt"))
    for task in sorted({r.task for r in rows if r.metric_name == "perplexity"}):
        for group in ("layer", "row"):  # the same comparison group for both methods
            wanda, mag = found.get((task, f"wanda ({group})")), found.get((task, f"magnitude ({group})"))
            if wanda and mag:
                checks.append((f"{task}: Wanda beats magnitude at 50% one-shot, per {group}",
                               wanda.metric < mag.metric, f"ppl {wanda.metric:.2f} vs {mag.metric:.2f}"))
        for joint, alone in (("50% + int8", "sparsegpt"), ("2:4 + int8", "sparsegpt 2:4")):
            both, float_only = found.get((task, joint)), found.get((task, alone))
            if both and float_only:
                ratio = both.metric / float_only.metric
                checks.append((f"{task}: {joint} (SparseGPT joint, W8A8) ppl within 3% of {alone} alone",
                               ratio <= 1.03, f"ppl {both.metric:.3f} vs {float_only.metric:.3f} ({ratio - 1:+.2%})"))
    return checks


def as_json(rows: list[Row]) -> dict:
    return {"machine": machine_info(), "rows": [asdict(r) for r in rows],
            "targets": [{"claim": c, "met": ok, "figures": f} for c, ok, f in check_targets(rows)]}
