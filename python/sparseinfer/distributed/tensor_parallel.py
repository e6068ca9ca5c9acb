"""sparseinfer.distributed.parallelize: split a model's layers over the ranks of a
torch.distributed group, in place. Each layer is cut on its canonical layout by its format's
registered rule (``registry.WeightFormat.shard``) and the shard is validated and packed locally."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .. import registry
from ..nn.linear_like import is_linear_like, linear_weight, replace_submodule
from .layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from .plan import LayerPlan, TPInfo, local_heads, resolve
from .shard import layout_rule, shard_dense


def group_info(group) -> tuple[object, int, int]:
    """(group, this process's rank in it, its size); the default group when `group` is None."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call torch.distributed.init_process_group "
                           "(backend 'gloo' on CPUs, 'nccl' on GPUs) in every process first")
    group = dist.group.WORLD if group is None else group
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the given process group")
    return group, rank, dist.get_world_size(group)


def layer_options(module: nn.Module, spec: registry.WeightFormat) -> dict:
    """The layer's registered options as it holds them (e.g. int8's act and group_size)."""
    return {o.name: getattr(module, o.name) for o in spec.options if hasattr(module, o.name)}


def _slice_bias(bias: Optional[torch.Tensor], dim: int, start: int, stop: int) -> Optional[torch.Tensor]:
    if bias is None or dim == 1:
        return None
    return bias.detach()[start:stop].clone()


def shard_linear(module: nn.Module, dim: int, start: int, stop: int, name: str = "layer") -> nn.Module:
    """A new layer of the same kind holding rows (dim 0, with its bias slice) or columns (dim 1,
    no bias) [start, stop) of `module`'s weight: nn.Linear / HF Conv1D become nn.Linear; a
    registered format's layer is cut by its format's shard rule on the canonical arrays, then
    validated and packed (from its state arrays); a format without a rule is cut by the rule of its
    canonical layout (shard.LAYOUTS: pack-quantized, codebook, int-quantized) if it has one, else
    dequantized, sliced and re-packed, only if that reproduces the slice exactly (ValueError
    naming the format otherwise)."""
    spec = registry.for_layer(module)
    if spec is None:
        if not is_linear_like(module):
            raise ValueError(f"{name}: cannot shard a {type(module).__name__}")
        weight, bias = linear_weight(module)
        w = shard_dense(weight, dim, start, stop)
        b = _slice_bias(bias, dim, start, stop)
        with torch.device("meta"):
            layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype)
        layer.weight = nn.Parameter(w, requires_grad=False)
        if b is not None:
            layer.bias = nn.Parameter(b, requires_grad=False)
        return layer
    bias = _slice_bias(module.bias, dim, start, stop)
    options = layer_options(module, spec)
    attrs = {k: v for k, v in options.items() if k in spec.op_options}
    device = module.weight.device
    canonical = module.weight.to_canonical()
    rule = spec.shard or layout_rule(canonical)
    if rule is None:
        return _shard_by_dense(module, spec, dim, start, stop, bias, options, name)
    try:
        arrays = rule(canonical, dim, start, stop, **options)
    except ValueError as exc:
        raise ValueError(f"{name} ({spec.name}): {exc}") from None
    weight = module._weight_from_state(arrays)
    return spec.layer_cls.from_weight(weight, bias, **attrs).to(device)


def _shard_by_dense(module, spec, dim, start, stop, bias, options, name) -> nn.Module:
    dense = module.weight.to_dense()
    part = shard_dense(dense, dim, start, stop)
    try:
        layer = spec.layer_cls.from_dense(part, bias, **options)
        exact = torch.equal(layer.weight.to_dense().to(part.dtype), part)
    except ValueError as exc:
        exact, layer = False, exc
    if not exact:
        why = f" ({layer})" if isinstance(layer, Exception) else ""
        raise ValueError(f"{name}: format {spec.name!r} registers no sharding rule (WeightFormat.shard) and "
                         f"re-packing its dequantized {('rows', 'columns')[dim]} [{start}, {stop}) is not exact"
                         f"{why}; register a rule for it or keep the layer replicated (plan style 'replicate')")
    return layer.to(module.weight.device)


def parallel_module(module: nn.Module, plan: LayerPlan, group, rank: int, world: int,
                    shared: Optional[dict] = None) -> nn.Module:
    """The parallel replacement of `module` for this rank. `shared` caches dense slices by the
    tensor they come from, so tied weights (embedding and lm_head) stay one tensor."""
    start, stop = plan.bounds(rank, world)
    chunk = plan.bounds(0, world)[1]
    if plan.style == "vocab":
        weight = _shared_slice(module.weight, start, stop, shared)
        return VocabParallelEmbedding(weight, module.num_embeddings, start, stop, group, rank, world)
    if type(module) is nn.Linear and plan.dim == 0 and module.bias is None:  # may be tied to the embedding
        local = nn.Linear(module.in_features, stop - start, bias=False, device="meta")
        local.weight = _shared_slice(module.weight, start, stop, shared)
    else:
        local = shard_linear(module, plan.dim, start, stop, plan.name)
    if plan.style == "rowwise":
        bias = getattr(module, "bias", None)
        return RowParallelLinear(local, None if bias is None else bias.detach(), plan.size, start, stop,
                                 group, rank, world)
    in_features = _in_features(module)
    return ColumnParallelLinear(local, in_features, plan.size, start, stop, group, rank, world,
                                gather=plan.style == "colwise_rep", chunk=chunk)


def _in_features(module: nn.Module) -> int:
    if is_linear_like(module):
        return linear_weight(module)[0].shape[1]
    return module.in_features


def _shared_slice(weight: torch.Tensor, start: int, stop: int, shared: Optional[dict]) -> nn.Parameter:
    key = (id(weight), start, stop)
    if shared is not None and key in shared:
        return shared[key]
    p = nn.Parameter(weight.detach()[start:stop].clone(), requires_grad=False)
    if shared is not None:
        shared[key] = p
    return p


def parallelize(model: nn.Module, group=None, plan: Optional[dict] = None) -> nn.Module:
    """Split `model` over the ranks of `group` (the default group when None), in place, and
    return it. The plan defaults to Megatron-style tensor parallelism for the Llama family
    (sparseinfer.distributed.LLAMA_PLAN: q/k/v/gate/up colwise, o/down rowwise, the embedding and
    lm_head split by vocabulary); every registered format and nn.Linear is split on its canonical
    layout. The whole plan is checked (heads and sizes dividing, styles, shard boundaries of each
    format) and every shard built before the model changes; errors are ValueErrors naming the
    layer. Every rank must call this with the same model and plan."""
    group, rank, world = group_info(group)
    layers = resolve(model, plan, world)
    shared: dict = {}
    built = [(p.name, parallel_module(model.get_submodule(p.name), p, group, rank, world, shared)) for p in layers]
    for name, module in built:
        replace_submodule(model, name, module)
    attach_info(model, group, rank, world, layers)
    return model


def attach_info(model: nn.Module, group, rank: int, world: int, layers: tuple) -> None:
    heads, kv = local_heads(model, layers, world)
    model.sparseinfer_tp = TPInfo(group, rank, world, layers, heads, kv)


def check_plan(model: nn.Module, plan: Optional[dict] = None, world_size: int = 2) -> tuple:
    """The resolved plan of `model` over `world_size` ranks, or the ValueError parallelize would
    raise for it (no process group needed)."""
    return resolve(model, plan, world_size)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights `model` holds in this process: packed sparseinfer weights (their
    kernel form) plus every parameter and buffer, each tensor counted once."""
    seen, total = set(), 0
    for module in model.modules():
        if registry.for_layer(module) is not None:
            total += int(module.weight.nbytes())
    for t in (*model.parameters(), *model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
