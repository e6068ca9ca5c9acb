"""What the table reports for a model: its quality metric, the bytes its state_dict holds (what a
checkpoint stores) and its forward time relative to the dense model, measured in the same run."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..benchmarks.timing import interleaved_calls_s


def state_bytes(model: nn.Module) -> int:
    """Bytes of every tensor in the state_dict (shared tensors counted once)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.nbytes)
        if key not in seen:
            seen.add(key)
            total += tensor.nbytes
    return total


def _forward(model: nn.Module, x: torch.Tensor):
    return model(input_ids=x) if x.dtype == torch.long else model(x)


def forward_seconds(models: dict[str, nn.Module], x: torch.Tensor, repeats: int = 15) -> dict[str, float]:
    """Median seconds of one forward of each model on x. The models take turns in every round, so
    drift in machine load hits all of them alike."""
    for model in models.values():
        model.eval()
    with torch.inference_mode():
        return interleaved_calls_s({name: partial(_forward, model, x) for name, model in models.items()},
                                   rounds=repeats, warmup=2)
