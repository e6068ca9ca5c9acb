"""A task bundles a model family with its data, training recipe and metric, so every compression
method is applied and measured the same way: digits classification (accuracy, %) and next-character
prediction (perplexity)."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .data import digits, python_docs_text
from .models import char_llama, digits_cnn, digits_mlp


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEINFER_CACHE", Path.home() / ".cache" / "sparseinfer")) / "quality"


@dataclass
class Task:
    name: str
    metric: str                      # "accuracy %" or "perplexity"
    higher_is_better: bool
    build: Callable[[], nn.Module]
    config: dict                     # everything that determines the trained weights (cache key)
    train_batches: Callable[[int, int], list]   # (count, seed) -> batches
    calibration: Callable[[int], list]          # count -> batches of model inputs
    loss: Callable[[nn.Module, object], torch.Tensor]
    logits: Callable[[nn.Module, object], torch.Tensor]
    evaluate: Callable[[nn.Module], float]
    timing_input: torch.Tensor
    train_steps: int
    lr: float
    labels: Callable[[object], torch.Tensor] = lambda batch: batch[1]  # the distillation targets

    def trained(self, use_cache: bool = True, progress: bool = False) -> nn.Module:
        """The dense model trained with this task's recipe; cached on disk by its config hash."""
        key = hashlib.sha256(json.dumps({"name": self.name, **self.config}, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir() / f"{self.name}-{key}.safetensors"
        model = self.build()
        if use_cache and path.exists():
            from safetensors.torch import load_file
            model.load_state_dict(load_file(path))
            return model.eval()
        fit(model, self.train_batches(self.train_steps, 0), self.loss, self.lr, progress=progress,
            desc=f"train {self.name}")
        if use_cache:
            from safetensors.torch import save_file
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(path))
        return model.eval()


def fit(model: nn.Module, batches: list, loss_fn, lr: float, on_step=None, progress: bool = False,
        desc: str = "train", weight_decay: float = 0.0) -> list[float]:
    """Adam with a cosine learning-rate decay over the given batches; returns the losses."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / len(batches))))
    losses = []
    iterator = batches
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(batches, desc=desc, leave=False)
    for batch in iterator:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        schedule.step()
        if on_step is not None:
            on_step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _epochs(split, batch_size: int):
    def make(count: int, seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        out = []
        while len(out) < count:
            out.extend(split.batches(batch_size, g))
        return out[:count]
    return make


def classification_task(name: str, build, images: bool, train_steps: int = 1200, batch_size: int = 64,
                        lr: float = 2e-3) -> Task:
    train, test = digits(images=images)

    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((model(test.x).argmax(1) == test.y).float().mean())

    return Task(
        name=name, metric="accuracy %", higher_is_better=True, build=build,
        config={"train_steps": train_steps, "batch_size": batch_size, "lr": lr, "repr": repr(build())},
        train_batches=_epochs(train, batch_size),
        calibration=lambda count: [x for x, _ in _epochs(train, batch_size)(count, 99)],
        loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
        logits=lambda model, batch: model(batch[0]),
        evaluate=accuracy, timing_input=test.x, train_steps=train_steps, lr=lr)


def digits_mlp_task(hidden: int = 512, train_steps: int = 1200) -> Task:
    return classification_task(f"digits-mlp{hidden}", lambda: digits_mlp(hidden), False, train_steps)


def digits_cnn_task(channels: int = 16, train_steps: int = 800) -> Task:
    return classification_task(f"digits-cnn{channels}", lambda: digits_cnn(channels), True, train_steps)


def char_lm_task(hidden: int = 128, layers: int = 4, heads: int = 4, context: int = 64,
                 train_steps: int = 1500, batch_size: int = 32, lr: float = 3e-3,
                 max_chars: int | None = None, eval_windows: int = 64) -> Task:
    corpus = python_docs_text(max_chars)
    val = corpus.val_windows(context, eval_windows)

    def build():
        torch.manual_seed(0)
        return char_llama(corpus.vocab_size, hidden, layers, heads, context)

    def lm_loss(model, batch):
        return F.cross_entropy(model(input_ids=batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())

    def perplexity(model):
        with torch.no_grad():
            losses = [float(lm_loss(model, chunk)) for chunk in val.split(16)]
        return math.exp(sum(losses) / len(losses))

    def batches(count, seed):
        return list(corpus.windows("train", count * batch_size, context, seed).split(batch_size))

    return Task(
        name=f"char-llama{hidden}x{layers}", metric="perplexity", higher_is_better=False, build=build,
        config={"hidden": hidden, "layers": layers, "heads": heads, "context": context, "steps": train_steps,
                "batch": batch_size, "lr": lr, "chars": max_chars, "text": corpus.digest},
        train_batches=batches,
        calibration=lambda count: [w[:, :-1] for w in batches(count, 99)],
        loss=lm_loss,
        logits=lambda model, batch: model(input_ids=batch[:, :-1]).logits,
        evaluate=perplexity, timing_input=val[:8, :-1], train_steps=train_steps, lr=lr,
        labels=lambda batch: batch[:, 1:])
