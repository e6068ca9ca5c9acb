"""Per-architecture attention adapters: where a module's heads live and how to cut them out.

One adapter per supported attention module (matched by class, so transformers stays optional):
torch nn.MultiheadAttention, our PrunedMultiheadAttention, transformers LlamaAttention (grouped-query
attention), GPT2Attention and BERT-style `*Attention`. Each reports the head layout, the output
projection (whose input carries the concatenated heads: where Michel et al. 2019 put their head
gates, see `head_gates`) and how to remove heads (see `heads.prune_heads`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..nn.linear_like import is_hf_conv1d, is_linear_like, linear_features, linear_weight, replace_submodule
from .pruned_mha import PrunedMultiheadAttention, _channels, _sliced_linear


@dataclass(frozen=True)
class _HeadLayout:
    num_heads: int
    head_dim: int
    group_size: int = 1  # query heads sharing one key/value head (GQA); pruned together


class _Adapter:
    kind = ""

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def layout(self, module: nn.Module) -> _HeadLayout:
        raise NotImplementedError

    def out_weight(self, module: nn.Module) -> torch.Tensor:
        """Output-projection weight as [out, num_heads * head_dim]."""
        raise NotImplementedError

    def gate_target(self, module: nn.Module) -> Optional[nn.Module]:
        """Module whose input is the concatenated head outputs (None: gate by forward override)."""
        raise NotImplementedError

    def check_prunable(self, name: str, module: nn.Module) -> None:
        """Raise if the module's projections are not the plain layers pruning rewrites."""
        raise NotImplementedError

    def prune(self, model: nn.Module, name: str, module: nn.Module, heads: list[int]) -> None:
        raise NotImplementedError


def _dense_weight(layer: nn.Module, kind: str) -> torch.Tensor:
    """[out, in] weight of a dense projection (nn.Linear or HF Conv1D)."""
    if not (is_linear_like(layer) or isinstance(layer, nn.Linear)):
        raise TypeError(f"the output projection of a {kind} is a {type(layer).__name__}; weight_norm "
                        "importance needs a dense nn.Linear / Conv1D (score heads before swapping layers)")
    return linear_weight(layer)[0]


def _in_features(layer: nn.Module) -> int:
    if is_linear_like(layer):
        return linear_features(layer)[1]
    features = getattr(layer, "in_features", None)
    if not isinstance(features, int):
        raise TypeError(f"cannot read the input size of a {type(layer).__name__} output projection")
    return features


def _require_types(name: str, module: nn.Module, attrs: Sequence[str], check: Callable, what: str) -> None:
    for attr in attrs:
        if not check(getattr(module, attr)):
            raise TypeError(f"{name}.{attr} is {type(getattr(module, attr)).__name__}, not {what}; "
                            "prune heads before swapping layers (sparsify/quantize)")


class _TorchMHAAdapter(_Adapter):
    kind = "nn.MultiheadAttention"

    def matches(self, module):
        return type(module) is nn.MultiheadAttention

    def layout(self, module):
        return _HeadLayout(module.num_heads, module.head_dim)

    def out_weight(self, module):
        return _dense_weight(module.out_proj, self.kind)

    def gate_target(self, module):
        return None

    def check_prunable(self, name, module):
        if not name:
            raise ValueError("an nn.MultiheadAttention is replaced on pruning; pass the model holding it, "
                             "not the attention module itself")

    def prune(self, model, name, module, heads):
        keep = [h for h in range(module.num_heads) if h not in set(heads)]
        replace_submodule(model, name, PrunedMultiheadAttention.from_multihead_attention(module, keep))
        # An enclosing encoder's nested-tensor fast path would feed nested tensors to this module.
        for parent_name, parent in model.named_modules():
            if (isinstance(parent, nn.TransformerEncoder) and getattr(parent, "use_nested_tensor", False)
                    and (not parent_name or name.startswith(parent_name + "."))):
                parent.use_nested_tensor = False


class _PrunedMHAAdapter(_Adapter):
    kind = "PrunedMultiheadAttention"

    def matches(self, module):
        return isinstance(module, PrunedMultiheadAttention)

    def layout(self, module):
        return _HeadLayout(module.num_heads, module.head_dim)

    def out_weight(self, module):
        return _dense_weight(module.out_proj, self.kind)

    def gate_target(self, module):
        return module.out_proj

    def check_prunable(self, name, module):
        _require_types(name, module, ("q_proj", "k_proj", "v_proj", "out_proj"),
                       lambda m: type(m) is nn.Linear, "nn.Linear")

    def prune(self, model, name, module, heads):
        module.prune_heads(heads)


class _LlamaAdapter(_Adapter):
    kind = "LlamaAttention"
    class_names = ("LlamaAttention",)

    def matches(self, module):
        return type(module).__name__ in self.class_names and hasattr(module, "o_proj")

    def layout(self, module):
        return _HeadLayout(_in_features(module.o_proj) // module.head_dim, module.head_dim,
                           module.num_key_value_groups)

    def out_weight(self, module):
        return _dense_weight(module.o_proj, self.kind)

    def gate_target(self, module):
        return module.o_proj

    def check_prunable(self, name, module):
        _require_types(name, module, ("q_proj", "k_proj", "v_proj", "o_proj"),
                       lambda m: type(m) is nn.Linear, "nn.Linear")

    def prune(self, model, name, module, heads):
        layout = self.layout(module)
        removed = set(heads)
        keep_q = [h for h in range(layout.num_heads) if h not in removed]
        keep_kv = sorted({h // layout.group_size for h in keep_q})
        q_index, kv_index = _channels(keep_q, layout.head_dim), _channels(keep_kv, layout.head_dim)
        # forward reshapes with (..., -1, head_dim) and repeats kv by num_key_value_groups, which
        # stays valid because whole groups go; the shared config keeps the original counts.
        module.q_proj = _sliced_linear(module.q_proj, rows=q_index)
        module.k_proj = _sliced_linear(module.k_proj, rows=kv_index)
        module.v_proj = _sliced_linear(module.v_proj, rows=kv_index)
        module.o_proj = _sliced_linear(module.o_proj, cols=q_index)


def _original_head_ids(current: Sequence[int], already_pruned: set[int], num_heads: int) -> list[int]:
    """Current head indices -> the original indices transformers' prune_heads expects."""
    remaining = sorted(set(range(num_heads + len(already_pruned))) - already_pruned)
    return [remaining[h] for h in current]


def _record_in_config(model: nn.Module, module: nn.Module, original_ids: list[int], layer_attr: str,
                      list_path: str) -> None:
    """Mirror PreTrainedModel.prune_heads: config.pruned_heads[layer] so reloading re-prunes."""
    config = getattr(model, "config", None)
    base = getattr(model, "base_model", None)
    pruned = getattr(config, "pruned_heads", None)
    if base is None or not isinstance(pruned, dict):
        return
    try:
        layers = base.get_submodule(list_path)
    except AttributeError:
        return
    for index, layer in enumerate(layers):
        if getattr(layer, layer_attr, None) is module:
            pruned[index] = sorted(set(pruned.get(index, [])) | set(original_ids))
            return


class _GPT2Adapter(_Adapter):
    kind = "GPT2Attention"

    def matches(self, module):
        return type(module).__name__ == "GPT2Attention" and not getattr(module, "is_cross_attention", True)

    def layout(self, module):
        return _HeadLayout(module.num_heads, module.head_dim)

    def out_weight(self, module):
        return _dense_weight(module.c_proj, self.kind)

    def gate_target(self, module):
        return module.c_proj

    def check_prunable(self, name, module):
        _require_types(name, module, ("c_attn", "c_proj"), is_hf_conv1d, "transformers Conv1D")

    def prune(self, model, name, module, heads):
        original = _original_head_ids(heads, set(module.pruned_heads), module.num_heads)
        module.prune_heads(original)
        _record_in_config(model, module, original, "attn", "h")


class _BertAdapter(_Adapter):
    kind = "BERT-style attention"

    def matches(self, module):
        inner, output = getattr(module, "self", None), getattr(module, "output", None)
        return (type(module).__name__.endswith("Attention") and callable(getattr(module, "prune_heads", None))
                and all(hasattr(inner, a) for a in ("query", "key", "value", "num_attention_heads",
                                                    "attention_head_size"))
                and hasattr(output, "dense"))

    def layout(self, module):
        return _HeadLayout(module.self.num_attention_heads, module.self.attention_head_size)

    def out_weight(self, module):
        return _dense_weight(module.output.dense, self.kind)

    def gate_target(self, module):
        return module.output.dense

    def check_prunable(self, name, module):
        _require_types(name, module.self, ("query", "key", "value"), lambda m: type(m) is nn.Linear, "nn.Linear")
        _require_types(name, module.output, ("dense",), lambda m: type(m) is nn.Linear, "nn.Linear")

    def prune(self, model, name, module, heads):
        original = _original_head_ids(heads, set(module.pruned_heads), module.self.num_attention_heads)
        module.prune_heads(original)
        _record_in_config(model, module, original, "attention", "encoder.layer")


_ADAPTERS: tuple[_Adapter, ...] = (_TorchMHAAdapter(), _PrunedMHAAdapter(), _LlamaAdapter(),
                                   _GPT2Adapter(), _BertAdapter())
SUPPORTED = ", ".join(a.kind for a in _ADAPTERS)


def _adapter_for(module: nn.Module) -> Optional[_Adapter]:
    return next((a for a in _ADAPTERS if a.matches(module)), None)

