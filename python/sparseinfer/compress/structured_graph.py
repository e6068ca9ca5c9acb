"""Channel dependencies for structured pruning, found with torch.fx.

Starting at a producer (an nn.Conv2d with groups=1 or an nn.Linear), the analysis follows its output
through ops that keep channels independent of each other (activations, dropout, BatchNorm, pooling,
flatten, view/reshape to (N, -1), arithmetic with a scalar) to the layers that read it: the next
Conv2d's input channels or Linear's input features. After a flatten, a channel is a block of
consecutive features (channel-major, H*W per channel). Any other use (residual add, concatenation,
the model output, a grouped convolution, an op this file does not know) makes the producer
unprunable, and the reason is recorded.
"""
from __future__ import annotations

import contextlib
import math
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
# Shape-preserving modules that act on every element (or channel) independently.
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)
ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.leaky_relu, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.mish, F.softplus, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.dropout, F.dropout1d, F.dropout2d, torch.clamp, operator.neg,
}
ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_",
                       "contiguous", "clone"}
SCALAR_OPERATORS = {operator.add, operator.sub, operator.mul, operator.truediv,
                    torch.add, torch.sub, torch.mul, torch.div}
# Pooling: number of trailing (spatial) dimensions it reduces; the channel must lie before them.
POOL_MODULES = {nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveMaxPool1d: 1,
                nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveMaxPool2d: 2}
POOL_FUNCTIONS = {F.max_pool1d: 1, F.avg_pool1d: 1, F.adaptive_avg_pool1d: 1, F.adaptive_max_pool1d: 1,
                  F.max_pool2d: 2, F.avg_pool2d: 2, F.adaptive_avg_pool2d: 2, F.adaptive_max_pool2d: 2}


def is_prunable_layer(module: nn.Module) -> bool:
    """Layers whose output channels (Conv2d filters, Linear rows) structured pruning can remove."""
    return type(module) in (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class ChannelUse:
    """A module that must shrink with a producer: `role` is "conv_in", "linear_in" or "batchnorm";
    each producer channel is `block` consecutive entries of the module's feature dimension."""
    name: str
    role: str
    block: int


@dataclass(frozen=True)
class ProducerPlan:
    """A Conv2d/Linear layer: its output channels and the modules that shrink with them; `reason`
    says why it cannot be pruned ("" when it can)."""
    name: str
    channels: int
    uses: tuple[ChannelUse, ...] = ()
    reason: str = ""


class _Unfollowable(Exception):
    """The producer's output reaches something whose channels cannot be shrunk with it."""


def trace_model(model: nn.Module) -> fx.GraphModule:
    """torch.fx.symbolic_trace with a clear error for models it cannot trace."""
    try:
        return fx.symbolic_trace(model)
    except Exception as error:
        raise ValueError(f"model ({type(model).__name__}) cannot be traced by torch.fx.symbolic_trace, which "
                         f"structured pruning needs to find the layers that consume each channel: "
                         f"{type(error).__name__}: {error}") from error


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, restoring each one's own train/eval flag afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def analyze_channel_dependencies(model: nn.Module, example_inputs: tuple
                                 ) -> tuple[fx.GraphModule, dict[str, ProducerPlan]]:
    """Trace `model`, record every node's shape with one eval-mode forward on `example_inputs` (BatchNorm
    running stats untouched), and plan every Conv2d/Linear layer (module order): the modules that
    shrink with its output channels, or the reason it cannot be pruned. Returns (graph module, plans)."""
    graph_module = trace_model(model)
    try:
        with eval_mode(graph_module), torch.no_grad():
            ShapeProp(graph_module).propagate(*example_inputs)
    except Exception as error:
        raise ValueError(f"example_input could not run through the model: {type(error).__name__}: {error}") from error
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph_module.graph.nodes if n.op == "call_module")
    nodes = {n.target: n for n in graph_module.graph.nodes if n.op == "call_module"}
    plans: dict[str, ProducerPlan] = {}
    for name, module in modules.items():
        if is_prunable_layer(module):
            plans[name] = _plan(name, module, nodes.get(name), modules, calls)
    return graph_module, plans


def _plan(name: str, module: nn.Module, node: Optional[fx.Node], modules: dict[str, nn.Module],
          calls: Counter) -> ProducerPlan:
    is_conv = type(module) is nn.Conv2d
    channels = module.out_channels if is_conv else module.out_features
    if calls[name] != 1:
        why = "not called in forward" if calls[name] == 0 else f"called {calls[name]} times in forward (shared weights)"
        return ProducerPlan(name, channels, reason=why)
    if is_conv and module.groups != 1:
        return ProducerPlan(name, channels, reason=f"grouped/depthwise convolution (groups={module.groups})")
    try:
        shape = _shape(node)
        channel_dim = len(shape) - (3 if is_conv else 1)
        uses = _follow(node, channel_dim, channels, modules, calls)
    except _Unfollowable as reason:
        return ProducerPlan(name, channels, reason=f"output {reason}")
    return ProducerPlan(name, channels, tuple(uses))


def following_batchnorm(graph_module: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """Name of the BatchNorm that is the only user of `node`'s output (Network Slimming's layout),
    if there is one and it normalizes exactly the producer's channels."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op != "call_module" or user.args[:1] != (node,):
        return None
    producer = graph_module.get_submodule(node.target)
    norm = graph_module.get_submodule(user.target)
    if not isinstance(norm, BATCHNORM_TYPES) or not is_prunable_layer(producer):
        return None
    channels = producer.out_channels if type(producer) is nn.Conv2d else producer.out_features
    return user.target if norm.num_features == channels else None


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, TensorMetadata):
        raise _Unfollowable(f"reaches node {node.name}, which does not produce a single tensor")
    return tuple(meta.shape)


def _follow(start: fx.Node, channel_dim: int, channels: int, modules: dict[str, nn.Module],
            calls: Counter) -> list[ChannelUse]:
    """Walk every path from `start` to the modules consuming its channels; raise _Unfollowable."""
    uses: list[ChannelUse] = []
    pending = [(start, channel_dim, 1)]
    while pending:
        node, dim, block = pending.pop()
        for user in node.users:
            use, state = _step(user, node, dim, block, channels, modules, calls)
            if use is not None:
                uses.append(use)
            if state is not None:
                pending.append((user, *state))
    return uses


def _other_nodes(user: fx.Node, node: fx.Node) -> bool:
    """True if `user` takes `node` other than as its first argument, or takes other nodes too."""
    found: list[fx.Node] = []
    fx.node.map_arg((user.args[1:], user.kwargs), found.append)
    return not user.args or user.args[0] is not node or bool(found)


def _step(user: fx.Node, node: fx.Node, dim: int, block: int, channels: int,
          modules: dict[str, nn.Module], calls: Counter):
    """One edge node -> user: (ChannelUse or None, next (dim, block) to follow or None)."""
    where = user.name
    if user.op == "output":
        raise _Unfollowable("feeds the model output")
    shape = _shape(node)
    if user.op == "call_module":
        module = modules[user.target]
        kind = type(module).__name__
        if _other_nodes(user, node):
            raise _Unfollowable(f"reaches {kind} {user.target} with other tensor inputs")
        if type(module) in (nn.Conv2d, nn.Linear) or isinstance(module, BATCHNORM_TYPES):
            if calls[user.target] != 1:
                raise _Unfollowable(f"feeds {kind} {user.target}, which is called {calls[user.target]} times")
        if type(module) is nn.Conv2d:
            if module.groups != 1:
                raise _Unfollowable(f"feeds grouped/depthwise convolution {user.target} (groups={module.groups})")
            if dim != len(shape) - 3 or block != 1:
                raise _Unfollowable(f"reaches convolution {user.target} along a dimension other than its channels")
            return ChannelUse(user.target, "conv_in", 1), None
        if type(module) is nn.Linear:
            if dim != len(shape) - 1 or module.in_features != channels * block:
                raise _Unfollowable(f"reaches Linear {user.target} along a dimension other than its features")
            return ChannelUse(user.target, "linear_in", block), None
        if isinstance(module, BATCHNORM_TYPES):
            if dim != 1 or module.num_features != channels * block:
                raise _Unfollowable(f"reaches {kind} {user.target} along a dimension other than its features")
            return ChannelUse(user.target, "batchnorm", block), (dim, block)
        if isinstance(module, ELEMENTWISE_MODULES) or (type(module) is nn.PReLU and module.num_parameters == 1):
            return None, (dim, block)
        if type(module) in POOL_MODULES and not getattr(module, "return_indices", False):
            return None, _pooled(dim, block, shape, POOL_MODULES[type(module)], where)
        if type(module) is nn.Flatten:
            return None, _merge(shape, module.start_dim, module.end_dim, dim, block, where)
        raise _Unfollowable(f"feeds {kind} {user.target}, which structured pruning cannot follow")
    if user.op == "call_function":
        return None, _function_step(user, node, dim, block, shape, where)
    if user.op == "call_method":
        return None, _method_step(user, node, dim, block, shape, where)
    raise _Unfollowable(f"reaches node {where} ({user.op}), which structured pruning cannot follow")


def _function_step(user: fx.Node, node: fx.Node, dim: int, block: int, shape: tuple, where: str):
    target = user.target
    name = getattr(target, "__name__", str(target))
    if target in SCALAR_OPERATORS:
        operands = [a for a in (*user.args, *user.kwargs.values()) if a is not node]
        if len(operands) == len(user.args) + len(user.kwargs) - 1 and all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in operands):
            return dim, block
        kind = "residual add" if target in (operator.add, torch.add) else f"{name} with another tensor"
        raise _Unfollowable(f"reaches a {kind} at node {where}, which structured pruning cannot follow")
    if target is torch.cat or target is torch.concat or target is torch.stack:
        raise _Unfollowable(f"is concatenated ({name}) at node {where}")
    if target in ELEMENTWISE_FUNCTIONS and not _other_nodes(user, node):
        return dim, block
    if target in POOL_FUNCTIONS and not _other_nodes(user, node) and not user.kwargs.get("return_indices"):
        return _pooled(dim, block, shape, POOL_FUNCTIONS[target], where)
    if target is torch.flatten and not _other_nodes(user, node):
        start = user.args[1] if len(user.args) > 1 else user.kwargs.get("start_dim", 0)
        end = user.args[2] if len(user.args) > 2 else user.kwargs.get("end_dim", -1)
        return _merge(shape, start, end, dim, block, where)
    if target is torch.reshape and not _other_nodes_than_shape(user, node):
        return _reshape(user, shape, dim, block, user.args[1] if len(user.args) > 1 else user.kwargs["shape"])
    if target is getattr and user.args[1] in ("dtype", "device", "ndim", "is_cuda"):
        return None
    if target is getattr and user.args[1] == "shape":
        _check_shape_reads(user, dim, len(shape))
        return None
    raise _Unfollowable(f"reaches {name} at node {where}, which structured pruning cannot follow")


def _method_step(user: fx.Node, node: fx.Node, dim: int, block: int, shape: tuple, where: str):
    method = user.target
    if user.args[0] is not node:
        raise _Unfollowable(f"is an argument of .{method}() at node {where}")
    if method in ("dim", "type_as") or (method == "size" and not user.args[1:] and not user.kwargs):
        if method == "size":
            _check_shape_reads(user, dim, len(shape))
        return None
    if method == "size":
        index = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim")
        if isinstance(index, int) and index % len(shape) != dim:
            return None
        raise _Unfollowable(f"has its channel count read by .size() at node {where}")
    if method in ELEMENTWISE_METHODS and not _other_nodes(user, node):
        return dim, block
    if method == "flatten" and not _other_nodes(user, node):
        start = user.args[1] if len(user.args) > 1 else user.kwargs.get("start_dim", 0)
        end = user.args[2] if len(user.args) > 2 else user.kwargs.get("end_dim", -1)
        return _merge(shape, start, end, dim, block, where)
    if method in ("view", "reshape") and not _other_nodes_than_shape(user, node):
        sizes = user.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        return _reshape(user, shape, dim, block, sizes or user.kwargs.get("shape", ()))
    raise _Unfollowable(f"reaches .{method}() at node {where}, which structured pruning cannot follow")


def _other_nodes_than_shape(user: fx.Node, node: fx.Node) -> bool:
    """view/reshape may take size nodes (x.size(0)) in its shape; anything else is another tensor."""
    if not user.args or user.args[0] is not node:
        return True
    found: list[fx.Node] = []
    fx.node.map_arg((user.args[1:], user.kwargs), found.append)
    return any(n is node or "tensor_meta" in n.meta for n in found)


def _check_shape_reads(user: fx.Node, dim: int, ndim: int) -> None:
    """x.shape / x.size() is harmless if only other dimensions are read from it."""
    for reader in user.users:
        index = reader.args[1] if reader.target is operator.getitem and len(reader.args) > 1 else None
        if not isinstance(index, int) or index % ndim == dim:
            raise _Unfollowable(f"has its shape read at node {reader.name} in a way that depends on the channel count")


def _pooled(dim: int, block: int, shape: tuple, pooled_dims: int, where: str) -> tuple[int, int]:
    if block != 1 or dim >= len(shape) - pooled_dims:
        raise _Unfollowable(f"is pooled across channels at node {where}")
    return dim, block


def _merge(shape: tuple, start: int, end: int, dim: int, block: int, where: str) -> tuple[int, int]:
    """Channel (dim, block) after dims start..end of `shape` are merged into one (flatten)."""
    ndim = len(shape)
    if not (isinstance(start, int) and isinstance(end, int)) or ndim == 0:
        raise _Unfollowable(f"is flattened with non-constant dimensions at node {where}")
    start, end = start % ndim, end % ndim
    if dim < start:
        return dim, block
    if dim > end:
        return dim - (end - start), block
    if any(shape[i] != 1 for i in range(start, dim)):
        raise _Unfollowable(f"is flattened together with a leading dimension at node {where}")
    return start, block * math.prod(shape[dim + 1:end + 1])


def _reshape(user: fx.Node, shape: tuple, dim: int, block: int, sizes) -> tuple[int, int]:
    """view/reshape followed only when it merges consecutive dims (a flatten) and the channel's
    merged dimension is given as -1 (a fixed size would break once channels are removed)."""
    out_shape = _shape(user)
    dropped = len(shape) - len(out_shape)
    reason = f"is reshaped at node {user.name} in a way structured pruning cannot follow"
    for start in range(max(0, len(shape) - dropped)):
        end = start + dropped
        if shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:] != out_shape:
            continue
        try:
            new_dim, new_block = _merge(shape, start, end, dim, block, user.name)
        except _Unfollowable as error:
            reason = str(error)
            continue
        if new_dim < len(sizes) and sizes[new_dim] == -1:
            return new_dim, new_block
        reason = (f"is reshaped at node {user.name} with a fixed size for the channel dimension "
                  f"(write -1 there, e.g. x.view(x.size(0), -1))")
    raise _Unfollowable(reason)
