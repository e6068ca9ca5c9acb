"""Whole-layer pruning: score transformer blocks and remove the least useful ones.

Scores (higher = more important):
  - "loss": increase of the loss when the block is skipped, i.e. replaced by the identity on the
    residual stream (its output is its input);
  - "cosine": 1 - cosine similarity between a block's input and output hidden states, averaged
    over positions (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers":
    blocks that barely rotate the residual stream can go).
`drop_layers` removes blocks from the model's block list (Llama `model.layers`, GPT-2
`transformer.h`, BERT `encoder.layer`, `nn.TransformerEncoder.layers`, or any nn.ModuleList path)
and updates the layer counts and per-layer `layer_idx` that configs and KV caches rely on.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("loss", "cosine")
# Searched in order when no layers_path is given.
KNOWN_LAYER_PATHS = ("model.layers", "transformer.h", "bert.encoder.layer", "encoder.layer", "layers", "h")


def find_layer_list(model: nn.Module, layers_path: Optional[str] = None) -> tuple[str, nn.ModuleList]:
    """(path, nn.ModuleList) of the model's transformer blocks.

    Args:
        model: the model.
        layers_path: dotted path of the block list; default: the first of KNOWN_LAYER_PATHS
            present, else the layers of the model's only nn.TransformerEncoder.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if layers_path is not None:
        if not isinstance(layers_path, str):
            raise TypeError(f"layers_path must be a dotted module path, got {layers_path!r}")
        try:
            layers = model.get_submodule(layers_path)
        except AttributeError:
            raise ValueError(f"layers_path {layers_path!r} names no module of the model") from None
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"layers_path {layers_path!r} is a {type(layers).__name__}, not an nn.ModuleList")
        return layers_path, layers
    for path in KNOWN_LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path, layers
    encoders = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.TransformerEncoder)]
    if len(encoders) == 1 and not any(isinstance(m, nn.TransformerDecoder) for m in model.modules()):
        name = encoders[0][0]
        return (f"{name}.layers" if name else "layers"), encoders[0][1].layers
    raise ValueError(f"could not find the model's block list (tried {', '.join(KNOWN_LAYER_PATHS)} and a "
                     "single nn.TransformerEncoder); pass layers_path='dotted.path.to.ModuleList'")


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "src", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise TypeError("cannot find a block's input hidden states (first positional argument or "
                    "hidden_states=/src=)")


def _block_hidden(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"a block returned {type(output).__name__}; expected a tensor or a tuple starting with one")


def _skip_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook turning a block into the identity on the residual stream."""
    hidden = _block_input(args, kwargs)
    if isinstance(output, torch.Tensor):
        return hidden
    _block_hidden(output)
    return type(output)([hidden, *output[1:]]) if isinstance(output, list) else (hidden, *output[1:])


def _scalar(loss: Any) -> float:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    return float(loss)


def layer_importance(model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                     method: str = "loss", *, layers_path: Optional[str] = None,
                     progress: bool = False) -> torch.Tensor:
    """Importance of every block of the model's block list (higher = more important).

    Args:
        model: the model (run in eval mode, without gradients).
        batches: iterable of batches (materialised into a list: "loss" runs it once per block).
        loss_fn: loss_fn(model, batch) -> scalar loss. For "cosine" only its forward pass matters.
        method: "loss" (mean loss with the block skipped minus the baseline mean loss) or
            "cosine" (1 - cos(block input, block output), mean over positions and batches).
        layers_path: see find_layer_list.
        progress: show a tqdm bar.
    Returns:
        float32 tensor [num_layers].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    _, layers = find_layer_list(model, layers_path)
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty")
    from tqdm.auto import tqdm

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if method == "loss":
                return _loss_importance(model, layers, batches, loss_fn, tqdm, progress)
            return _cosine_importance(model, layers, batches, loss_fn, tqdm, progress)
    finally:
        for m, mode in modes:
            m.training = mode


def _loss_importance(model, layers, batches, loss_fn, tqdm, progress) -> torch.Tensor:
    bar = tqdm(total=(len(layers) + 1) * len(batches), desc="layer importance", disable=not progress)

    def mean_loss() -> float:
        total = 0.0
        for batch in batches:
            total += _scalar(loss_fn(model, batch))
            bar.update()
        return total / len(batches)

    baseline = mean_loss()
    scores = torch.zeros(len(layers))
    for index, block in enumerate(layers):
        handle = block.register_forward_hook(_skip_hook, with_kwargs=True)
        try:
            scores[index] = mean_loss() - baseline
        finally:
            handle.remove()
    bar.close()
    return scores


def _cosine_importance(model, layers, batches, loss_fn, tqdm, progress) -> torch.Tensor:
    distance_sums = torch.zeros(len(layers), dtype=torch.float64)
    positions = torch.zeros(len(layers), dtype=torch.float64)

    def record(index: int, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        before, after = _block_input(args, kwargs), _block_hidden(output)
        cosine = F.cosine_similarity(before.double(), after.double(), dim=-1)
        distance_sums[index] += float((1 - cosine).sum())
        positions[index] += cosine.numel()

    handles = [block.register_forward_hook(lambda *a, i=i: record(i, *a), with_kwargs=True)
               for i, block in enumerate(layers)]
    try:
        for batch in tqdm(batches, desc="layer importance", disable=not progress):
            loss_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if bool((positions == 0).any()):
        raise ValueError("some blocks never ran during loss_fn; does loss_fn run the model?")
    return (distance_sums / positions).float()


def _check_indices(indices: Iterable[int], count: int, path: str) -> list[int]:
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise TypeError(f"indices must be a list of block indices, got {indices!r}")
    indices = list(indices)
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"indices holds {i!r}; block indices must be ints")
        if not 0 <= i < count:
            raise ValueError(f"block index {i} out of range for {path!r}, which has {count} blocks")
    if len(set(indices)) != len(indices):
        raise ValueError(f"indices repeats a block: {indices}")
    if len(indices) == count:
        raise ValueError(f"indices would remove all {count} blocks of {path!r}; keep at least one")
    return sorted(indices)


def drop_layers(model: nn.Module, indices: Iterable[int], *, layers_path: Optional[str] = None) -> None:
    """Remove whole blocks in place.

    Deletes the blocks from the block list, renumbers `layer_idx` attributes inside the kept blocks
    (KV caches index by them), and updates config.num_hidden_layers (n_layer for GPT-2),
    config.layer_types, config.pruned_heads keys and nn.TransformerEncoder.num_layers.

    Args:
        model: the model.
        indices: positions (in the current block list) of the blocks to remove.
        layers_path: see find_layer_list.
    Raises:
        ValueError: index out of range or repeated, all blocks, or a GPT-2 config with
            scale_attn_by_inverse_layer_idx (renumbering would change the kept blocks' math).
    """
    path, layers = find_layer_list(model, layers_path)
    count = len(layers)
    removed = _check_indices(indices, count, path)
    kept = [i for i in range(count) if i not in set(removed)]
    for new, old in enumerate(kept):
        if new != old and any(getattr(m, "scale_attn_by_inverse_layer_idx", False) for m in layers[old].modules()):
            raise ValueError("blocks scale attention by 1/(layer_idx+1) (scale_attn_by_inverse_layer_idx); "
                             "renumbering them would change their output, so drop_layers refuses")

    for index in reversed(removed):
        del layers[index]
    for new, old in enumerate(kept):
        for module in layers[new].modules():
            layer_idx = getattr(module, "layer_idx", None)
            if isinstance(layer_idx, int) and not isinstance(layer_idx, bool) and layer_idx == old:
                module.layer_idx = new
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and module.layers is layers:
            module.num_layers = len(layers)
    _update_config(getattr(model, "config", None), kept, count)


def _update_config(config: Any, kept: list[int], old_count: int) -> None:
    """Keep a transformers config in step, when it describes this block list."""
    if config is None or getattr(config, "num_hidden_layers", None) != old_count:
        return
    config.num_hidden_layers = len(kept)  # GPT2Config maps this onto n_layer
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == old_count:
        config.layer_types = [layer_types[i] for i in kept]
    pruned = getattr(config, "pruned_heads", None)
    if isinstance(pruned, dict) and pruned:
        config.pruned_heads = {new: pruned[old] for new, old in enumerate(kept) if old in pruned}
