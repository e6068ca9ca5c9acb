"""Tensor-parallel plans: which module is split how, checked against the model and the world
size before anything changes.

A plan maps module names or fnmatch patterns (``"model.layers.*.mlp.up_proj"``) to a style; the
style names are torch's / Hugging Face's (``config.base_model_tp_plan``):

- ``"colwise"``: a Linear's output features (weight rows) are split; its output stays split over
  the ranks (it feeds the attention heads of this rank or a rowwise layer).
- ``"rowwise"``: a Linear's input features (weight columns) are split; the partial outputs are
  summed with one all-reduce; the bias is added once, after it.
- ``"colwise_rep"``: output features split, outputs all-gathered (the lm_head: every rank gets
  the full logits); the split may be uneven (any vocabulary size).
- ``"vocab"``: an Embedding's rows (the vocabulary) are split; the looked-up rows are all-reduced.
- ``"replicate"``: left whole on every rank.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Optional

from torch import nn

from .shard import split_bounds

STYLES = ("colwise", "rowwise", "colwise_rep", "vocab", "replicate")
# the Llama family: column-parallel q/k/v/gate/up, row-parallel o/down (one all-reduce per block)
LLAMA_PLAN = {
    "model.embed_tokens": "vocab",
    "model.layers.*.self_attn.q_proj": "colwise",
    "model.layers.*.self_attn.k_proj": "colwise",
    "model.layers.*.self_attn.v_proj": "colwise",
    "model.layers.*.self_attn.o_proj": "rowwise",
    "model.layers.*.mlp.gate_proj": "colwise",
    "model.layers.*.mlp.up_proj": "colwise",
    "model.layers.*.mlp.down_proj": "rowwise",
    "lm_head": "colwise_rep",
}
LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_HEADS = {"q_proj": "num_attention_heads", "o_proj": "num_attention_heads",
          "k_proj": "num_key_value_heads", "v_proj": "num_key_value_heads"}
# per block: the layers whose outputs stay split and the rowwise layer that consumes them
_PAIRS = ((("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj"),
          (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"))


@dataclass(frozen=True)
class LayerPlan:
    """One module's split: along `dim` of its weight (0 rows / out features, 1 columns / in
    features) of `size` items, in whole `unit`s (a head's rows for attention projections)."""
    name: str
    style: str
    dim: int
    size: int
    unit: int = 1

    def bounds(self, rank: int, world: int) -> tuple[int, int]:
        return split_bounds(self.size, world, rank, self.unit)


@dataclass(frozen=True)
class TPInfo:
    """What a parallelized model carries (``model.sparseinfer_tp``): its group, rank, world size,
    its resolved plan and the attention heads each rank computes."""
    group: object
    rank: int
    world: int
    layers: tuple
    local_heads: Optional[int] = None
    local_kv_heads: Optional[int] = None


def _is_linear(module: nn.Module) -> bool:
    from .. import registry
    from ..nn.linear_like import is_linear_like
    return is_linear_like(module) or registry.for_layer(module) is not None


def _features(module: nn.Module) -> tuple[int, int]:
    from ..nn.linear_like import is_linear_like, linear_features
    if is_linear_like(module):
        return linear_features(module)
    return module.out_features, module.in_features


def default_plan(model: nn.Module) -> dict:
    name = type(model).__name__
    if name not in LLAMA_FAMILY:
        raise ValueError(f"no default tensor-parallel plan for {name} (the default covers "
                         f"{', '.join(LLAMA_FAMILY)}); pass plan={{module pattern: style}} with styles "
                         f"from {STYLES}")
    return dict(LLAMA_PLAN)


def _style_for(name: str, plan: dict) -> Optional[str]:
    if name in plan:
        return plan[name]
    styles = {style for pattern, style in plan.items() if fnmatch.fnmatchcase(name, pattern)}
    if len(styles) > 1:
        raise ValueError(f"plan gives module {name} conflicting styles {sorted(styles)}")
    return styles.pop() if styles else None


def resolve(model: nn.Module, plan: Optional[dict], world: int) -> tuple[LayerPlan, ...]:
    """The checked plan of `model` over `world` ranks (ValueError naming the entry, module or
    size at fault, before any module changes)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world size must be a positive int, got {world!r}")
    plan = default_plan(model) if plan is None else plan
    if not isinstance(plan, dict) or not all(isinstance(k, str) for k in plan):
        raise ValueError(f"plan must be a dict of module name / pattern -> style, got {type(plan).__name__}")
    bad = {k: v for k, v in plan.items() if v not in STYLES}
    if bad:
        raise ValueError(f"plan has unknown style(s) {bad}; styles are {STYLES}")
    modules = dict(model.named_modules())
    used = {k: False for k in plan}
    config = getattr(model, "config", None)
    layers = []
    for name, module in modules.items():
        style = _style_for(name, plan)
        if style is None:
            continue
        for key in plan:
            if key == name or fnmatch.fnmatchcase(name, key):
                used[key] = True
        if style == "replicate":
            continue
        layers.append(_layer_plan(name, module, style, world, config))
    unused = [k for k, hit in used.items() if not hit]
    if unused:
        raise ValueError(f"plan entr{'y' if len(unused) == 1 else 'ies'} {unused} match no module of "
                         f"{type(model).__name__}")
    styles = {p.name: p.style for p in layers}
    _check_pairs(modules, styles)
    return tuple(layers)


def _layer_plan(name: str, module: nn.Module, style: str, world: int, config) -> LayerPlan:
    if style == "vocab":
        if not isinstance(module, nn.Embedding):
            raise ValueError(f"plan style 'vocab' needs an nn.Embedding; {name} is a {type(module).__name__}")
        return LayerPlan(name, style, 0, module.num_embeddings)
    if not _is_linear(module):
        raise ValueError(f"plan style {style!r} needs a Linear layer (nn.Linear or a sparseinfer layer); "
                         f"{name} is a {type(module).__name__}")
    rows, cols = _features(module)
    dim, size = (1, cols) if style == "rowwise" else (0, rows)
    if style == "colwise_rep":
        return LayerPlan(name, style, dim, size)
    leaf = name.rpartition(".")[2]
    heads_key = _HEADS.get(leaf) if ".self_attn." in f".{name}" else None
    if heads_key is not None and config is not None and getattr(config, heads_key, None):
        heads = int(getattr(config, heads_key))
        if heads % world:
            raise ValueError(f"{heads_key}={heads} does not divide evenly over {world} ranks ({name}); "
                             "use a world size that divides both the attention heads and the KV heads")
        if size % heads:
            raise ValueError(f"{name}: {size} features are not {heads} whole heads")
        return LayerPlan(name, style, dim, size, size // heads)
    if size % world:
        raise ValueError(f"{name}: {size} {'input' if dim else 'output'} features do not divide evenly over "
                         f"{world} ranks (style {style!r})")
    return LayerPlan(name, style, dim, size)


def _check_pairs(modules: dict, styles: dict) -> None:
    """In every block, layers whose outputs stay split (colwise) and the layer that consumes them
    (rowwise) must be split together, or neither."""
    for name in modules:
        for producers, consumer in _PAIRS:
            if not name.endswith("." + consumer):
                continue
            block = name[: -len(consumer)]
            names = [block + p for p in producers if block + p in modules]
            split = [n for n in names if styles.get(n) == "colwise"]
            if styles.get(name) == "rowwise" and len(split) != len(names):
                lone = [n for n in names if n not in split]
                raise ValueError(f"plan splits {name} rowwise but not {lone} colwise: a rowwise layer needs "
                                 "its inputs split by the colwise layers before it")
            if split and styles.get(name) != "rowwise":
                raise ValueError(f"plan splits {split[0]} colwise but {name} is "
                                 f"{styles.get(name, 'replicate')!r}: the split outputs must feed a rowwise layer")
            wrong = [n for n in names if styles.get(n) not in (None, "colwise")]
            if wrong:
                raise ValueError(f"plan gives {wrong[0]} style {styles[wrong[0]]!r}; in a block the layers "
                                 f"before {consumer.rpartition('.')[2]} are 'colwise' (or all replicated)")


def local_heads(model: nn.Module, layers: tuple, world: int) -> tuple[Optional[int], Optional[int]]:
    """The attention heads and KV heads one rank computes under `layers` (None without a config)."""
    config = getattr(model, "config", None)
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if heads is None:
        return None, None
    kv = heads if kv is None else kv
    split_q = any(p.name.endswith("self_attn.q_proj") and p.style == "colwise" for p in layers)
    split_kv = any(p.name.endswith("self_attn.k_proj") and p.style == "colwise" for p in layers)
    return (heads // world if split_q else heads), (kv // world if split_kv else kv)
