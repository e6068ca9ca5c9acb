"""Knowledge distillation: train a (compressed) student to match a teacher's softened outputs.

Implements Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015):
loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels).
The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes.

Works for classification logits [N, C] and language-model logits [B, S, V] (leading dims are flattened;
positions whose label is `ignore_index` drop out of both terms). `distill` is the training loop; for
Hugging Face causal LMs pass forward=causal_lm_forward, labels=causal_lm_labels (next-token shift).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

Forward = Callable[[nn.Module, Any], Any]
LabelsOf = Callable[[Any], Optional[torch.Tensor]]


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_temperature_alpha(T, alpha) -> tuple[float, float]:
    T = _check_number(T, "T")
    if T <= 0:
        raise ValueError(f"T (temperature) must be > 0, got {T}")
    alpha = _check_number(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return T, alpha


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: Optional[torch.Tensor] = None, T: float = 2.0, alpha: float = 0.5,
                      ignore_index: int = -100) -> torch.Tensor:
    """Hinton distillation loss, a scalar float32 tensor.

    Args:
        student_logits: [..., C] (e.g. [N, C] or [B, S, V]); gradients flow into it.
        teacher_logits: same shape; treated as a constant (detached).
        labels: integer class ids shaped like student_logits[..., 0]; rows equal to `ignore_index`
            are left out of both terms. May be None only when alpha == 1 (then every row counts).
        T: softmax temperature (> 0). alpha: weight of the soft term, in [0, 1].
    Returns:
        alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels), each term the
        mean over the kept rows (KL with reduction="batchmean"). 0 (still in the graph) when no row
        is kept.
    """
    T, alpha = _check_temperature_alpha(T, alpha)
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point() or logits.dim() < 2:
            raise ValueError(f"{name} must be floating point with shape [..., classes], "
                             f"got {logits.dtype} {tuple(logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    classes = student_logits.shape[-1]
    student = student_logits.reshape(-1, classes).float()
    teacher = teacher_logits.detach().reshape(-1, classes).float()
    if labels is None:
        if alpha < 1.0:
            raise ValueError(f"labels is required when alpha < 1 (got alpha={alpha})")
        targets = None
    else:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
                or labels.dtype == torch.bool:
            raise ValueError("labels must be an integer tensor of class ids")
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(f"labels shape {tuple(labels.shape)} must equal the logits shape without "
                             f"the class dim, {tuple(student_logits.shape[:-1])}")
        flat_labels = labels.reshape(-1).to(student.device)
        keep = flat_labels != ignore_index
        student, teacher, targets = student[keep], teacher[keep], flat_labels[keep]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= classes):
            raise ValueError(f"labels must be in [0, {classes}) or equal ignore_index={ignore_index}, "
                             f"got values in [{int(targets.min())}, {int(targets.max())}]")
    if student.shape[0] == 0:
        return student.sum()  # every row ignored: a zero that backward() still accepts
    loss = student.new_zeros(())
    if alpha > 0.0:
        soft = F.kl_div(F.log_softmax(student / T, dim=-1), F.log_softmax(teacher / T, dim=-1),
                        reduction="batchmean", log_target=True)
        loss = loss + alpha * T * T * soft
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student, targets)
    return loss


def default_forward(model: nn.Module, batch) -> torch.Tensor:
    """model(batch[0]) for (inputs, labels, ...) batches, model(batch) for a bare tensor; a returned
    object with a `.logits` attribute (Hugging Face outputs) is unwrapped."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("batch is an empty tuple/list; expected (inputs, labels)")
        out = model(batch[0])
    elif isinstance(batch, torch.Tensor):
        out = model(batch)
    else:
        raise TypeError(f"default forward handles (inputs, labels) tuples or tensors, got "
                        f"{type(batch).__name__}; pass forward=lambda model, batch: ...")
    return _logits_of(out)


def default_labels(batch) -> Optional[torch.Tensor]:
    """batch[1] for (inputs, labels, ...) batches, else None (only valid with alpha=1)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    return None


def causal_lm_forward(model: nn.Module, batch) -> torch.Tensor:
    """Logits of a Hugging Face causal LM for positions 0..S-2 (each predicts the next token).
    `batch` is a dict with input_ids (and optional attention_mask) or a tensor of input_ids."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError("causal_lm_forward needs a dict with 'input_ids' or an input_ids tensor")
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return _logits_of(out)[:, :-1]


def causal_lm_labels(batch, ignore_index: int = -100) -> torch.Tensor:
    """Next-token labels matching causal_lm_forward: batch["labels"] (or input_ids with padding,
    attention_mask == 0, set to ignore_index) shifted left by one."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise TypeError("causal_lm_labels needs a dict with 'input_ids' or an input_ids tensor")
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, ignore_index)
    return labels[:, 1:]


def _logits_of(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"forward must produce a logits tensor (or an object with .logits), "
                    f"got {type(out).__name__}")


def _check_count(value, name: str, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def distill(student: nn.Module, teacher: nn.Module, loader: Iterable, *, epochs: int = 1,
            steps: Optional[int] = None, optimizer: Optional[torch.optim.Optimizer] = None,
            lr: float = 1e-3, T: float = 2.0, alpha: float = 0.5, forward: Optional[Forward] = None,
            labels: Optional[LabelsOf] = None, ignore_index: int = -100,
            on_step: Optional[Callable[[int], None]] = None, progress: bool = False) -> list[float]:
    """Train `student` to imitate `teacher` with distillation_loss; returns the loss of every step.

    The teacher runs in eval() mode under torch.no_grad(); the student in train() mode. Both get
    their original train/eval modes (per submodule) back at the end. Batches go to the models as
    they come (move them to the right device in the loader or in `forward`).

    Args:
        loader: re-iterable source of batches (e.g. a DataLoader).
        epochs: passes over `loader`. steps: if given, run exactly this many optimizer steps,
            re-iterating the loader as needed (overrides epochs, like HF Trainer's max_steps).
        optimizer: defaults to Adam(lr) over the student's parameters that require grad.
        T, alpha, ignore_index: see distillation_loss.
        forward(model, batch) -> logits: defaults to model(batch[0]); use causal_lm_forward for
            Hugging Face causal LMs.
        labels(batch) -> labels or None: defaults to batch[1]; use causal_lm_labels for causal LMs.
        on_step(step): called after every optimizer step with the 1-based step count (e.g. to
            advance a gradual-pruning schedule that re-applies masks).
        progress: show a tqdm progress bar.
    """
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    if student is teacher:
        raise ValueError("student and teacher must be different modules")
    epochs = _check_count(epochs, "epochs")
    steps = _check_count(steps, "steps", allow_none=True)
    T, alpha = _check_temperature_alpha(T, alpha)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    for name, fn in (("forward", forward), ("labels", labels), ("on_step", on_step)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    if isinstance(loader, (torch.Tensor, str, bytes)) or not isinstance(loader, Iterable):
        raise TypeError(f"loader must be an iterable of batches (e.g. a DataLoader), got {type(loader).__name__}")
    if optimizer is None:
        if _check_number(lr, "lr") <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        trainable = [p for p in student.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("student has no parameters that require grad")
        optimizer = torch.optim.Adam(trainable, lr=lr)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    forward = forward or default_forward
    labels = labels or default_labels

    total = steps
    if total is None and hasattr(loader, "__len__"):
        total = epochs * len(loader)
    modes = {module: module.training for model in (student, teacher) for module in model.modules()}
    student.train()
    teacher.eval()
    losses: list[float] = []
    bar = tqdm(total=total, desc="distill", disable=not progress)
    try:
        epoch = 0
        while (steps is None and epoch < epochs) or (steps is not None and len(losses) < steps):
            seen = 0
            for batch in loader:
                seen += 1
                student_logits = forward(student, batch)
                with torch.no_grad():
                    teacher_logits = forward(teacher, batch)
                loss = distillation_loss(student_logits, teacher_logits, labels(batch), T=T,
                                         alpha=alpha, ignore_index=ignore_index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if on_step is not None:
                    on_step(len(losses))
                if steps is not None and len(losses) >= steps:
                    break
            if seen == 0:
                raise ValueError(f"loader yielded no batches in pass {epoch + 1} "
                                 "(a generator can be iterated only once; pass a list or DataLoader)")
            epoch += 1
    finally:
        bar.close()
        for module, was_training in modes.items():
            module.training = was_training
    return losses
