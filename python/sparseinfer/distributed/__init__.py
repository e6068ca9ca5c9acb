"""Tensor parallelism on torch.distributed: every registered format (and nn.Linear) split over the
ranks of a process group, Megatron style, each rank holding and packing only its shard.

    torch.distributed.init_process_group("gloo")            # or "nccl" on GPUs
    model = sparseinfer.distributed.parallelize(model)      # an in-memory model, split in place
    model = sparseinfer.load(directory, tp_group=torch.distributed.group.WORLD)  # reads only the shard
    # a custom split: parallelize(model, plan={pattern: style}), load(..., tp_plan={pattern: style})
    tokens = sparseinfer.generate(model, prompt, 32)        # same on every rank

Names are imported on first use: the registry imports the sharding rules (.shard) while it is
itself being imported, and the parallel code imports the registry, so this package's own import
must not."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "parallelize": ".tensor_parallel", "check_plan": ".tensor_parallel", "weight_bytes": ".tensor_parallel",
    "shard_linear": ".tensor_parallel", "group_info": ".tensor_parallel",
    "LLAMA_PLAN": ".plan", "STYLES": ".plan", "LayerPlan": ".plan", "TPInfo": ".plan",
    "ColumnParallelLinear": ".layers", "RowParallelLinear": ".layers", "VocabParallelEmbedding": ".layers",
    "split_bounds": ".shard",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
