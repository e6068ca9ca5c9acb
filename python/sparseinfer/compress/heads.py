"""Attention-head importance and structured head pruning.

Importance follows Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?": each
head h gets a gate xi_h = 1 that scales its slice of the input of the attention output projection;
the importance of h is the expected |dL/dxi_h| over data. A data-free alternative ("weight_norm")
scores a head by the norm of its output-projection columns.

Pruning physically removes a head: its rows of the q/k/v projections and its columns of the output
projection, so the model is smaller and faster, and computes exactly what the unpruned model
computes with that head's gate set to 0.

Supported attention modules (matched by class, so transformers stays optional):
  - torch `nn.MultiheadAttention`, replaced on pruning by `PrunedMultiheadAttention` (nn.MHA needs
    embed_dim == num_heads * head_dim, so it cannot hold fewer heads);
  - transformers `LlamaAttention` (grouped-query attention: only whole key/value groups are pruned);
  - transformers `GPT2Attention` (self-attention) and BERT-style `*Attention` (`.self` + `.output`),
    pruned with their own `prune_heads`, with `config.pruned_heads` kept in step so
    `save_pretrained` / `from_pretrained` round-trips.
Head indices always refer to a module's *current* heads 0..num_heads-1.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.linear_like import is_hf_conv1d, is_linear_like, linear_features, linear_weight, replace_submodule

METHODS = ("gradient", "weight_norm")
SCOPES = ("global", "layer")


# --------------------------------------------------------------------------------------------
# Attention math shared by PrunedMultiheadAttention and the gated view of nn.MultiheadAttention
# --------------------------------------------------------------------------------------------

def _additive_mask(mask: Optional[torch.Tensor], dtype: torch.dtype, arg: str) -> Optional[torch.Tensor]:
    """nn.MultiheadAttention mask convention: bool True = not allowed, float = added to scores."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{arg} must be bool or floating point, got {mask.dtype}")
    return mask.to(dtype)


def _pad_key_dim(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if mask is None else F.pad(mask, (0, 1))


def _multihead_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
    project_q: Callable, project_k: Callable, project_v: Callable, project_out: Callable,
    num_heads: int, head_dim: int, batch_first: bool,
    bias_k: Optional[torch.Tensor], bias_v: Optional[torch.Tensor], add_zero_attn: bool,
    dropout_p: float, training: bool,
    key_padding_mask: Optional[torch.Tensor], need_weights: bool, attn_mask: Optional[torch.Tensor],
    average_attn_weights: bool, is_causal: bool, head_gate: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """nn.MultiheadAttention's math (same argument and return conventions), written out so that
    the number of heads is free and a per-head gate can scale each head's context."""
    if is_causal and attn_mask is None:
        raise ValueError("is_causal=True needs attn_mask: as in nn.MultiheadAttention it is only a "
                         "hint that attn_mask is the causal mask")
    batched = query.dim() == 3
    if not batched:  # (L, E): treat as a batch of one, batch first
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    batch, target_len = query.shape[:2]

    q, k, v = project_q(query), project_k(key), project_v(value)
    dtype = q.dtype
    attn_mask = _additive_mask(attn_mask, dtype, "attn_mask")
    key_padding_mask = _additive_mask(key_padding_mask, dtype, "key_padding_mask")
    if bias_k is not None:  # one learned extra key/value position
        k = torch.cat([k, bias_k.reshape(1, 1, -1).expand(batch, 1, -1)], dim=1)
        v = torch.cat([v, bias_v.reshape(1, 1, -1).expand(batch, 1, -1)], dim=1)
        attn_mask, key_padding_mask = _pad_key_dim(attn_mask), _pad_key_dim(key_padding_mask)
    q = q.reshape(batch, target_len, num_heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, k.shape[1], num_heads, head_dim).transpose(1, 2)
    v = v.reshape(batch, v.shape[1], num_heads, head_dim).transpose(1, 2)
    if add_zero_attn:  # one all-zero extra key/value position
        k = torch.cat([k, k.new_zeros(batch, num_heads, 1, head_dim)], dim=2)
        v = torch.cat([v, v.new_zeros(batch, num_heads, 1, head_dim)], dim=2)
        attn_mask, key_padding_mask = _pad_key_dim(attn_mask), _pad_key_dim(key_padding_mask)
    source_len = k.shape[2]

    scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        if attn_mask.dim() == 2 and attn_mask.shape == (target_len, source_len):
            scores = scores + attn_mask
        elif attn_mask.dim() == 3 and attn_mask.shape == (batch * num_heads, target_len, source_len):
            scores = scores + attn_mask.view(batch, num_heads, target_len, source_len)
        else:
            raise ValueError(f"attn_mask has shape {tuple(attn_mask.shape)}; expected "
                             f"{(target_len, source_len)} or {(batch * num_heads, target_len, source_len)}")
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, source_len):
            raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; "
                             f"expected {(batch, source_len)}")
        scores = scores + key_padding_mask.view(batch, 1, 1, source_len)
    weights = torch.softmax(scores, dim=-1)
    if training and dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    context = (weights @ v).transpose(1, 2).reshape(batch, target_len, num_heads * head_dim)
    if head_gate is not None:
        context = context * head_gate.repeat_interleave(head_dim).to(context.dtype)
    output = project_out(context)

    if not batched:
        output = output.squeeze(0)
    elif not batch_first:
        output = output.transpose(0, 1)
    if not need_weights:
        return output, None
    if average_attn_weights:
        weights = weights.mean(dim=1)
    return output, (weights if batched else weights.squeeze(0))


def _sliced_linear(linear: nn.Linear, *, rows: Optional[torch.Tensor] = None,
                   cols: Optional[torch.Tensor] = None) -> nn.Linear:
    """A new nn.Linear holding the given output rows and/or input columns of `linear`."""
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
        bias = bias.index_select(0, rows.to(weight.device)) if bias is not None else None
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    new.train(linear.training)
    return new


def _channels(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    """Channel indices (head-major layout h * head_dim + d) of the given heads."""
    heads = torch.as_tensor(list(heads), dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


class PrunedMultiheadAttention(nn.Module):
    """Drop-in replacement for nn.MultiheadAttention holding any number of heads.

    Same forward signature and return value as nn.MultiheadAttention: (output, weights or None);
    supports attn_mask (2-D, or 3-D per head for either the current or the original head count),
    key_padding_mask, need_weights, average_attn_weights, batch_first, add_bias_kv, add_zero_attn,
    kdim/vdim and unbatched input. q/k/v/out projections are plain nn.Linear modules, so
    `sparseinfer.sparsify` can swap them afterwards.
    """

    # nn.TransformerEncoder(Layer) read these to choose their fused kernel, which assumes
    # embed_dim == num_heads * head_dim; these values make them take the module path instead.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, bias: bool = True, add_bias_kv: bool = False,
                 add_zero_attn: bool = False, dropout: float = 0.0, batch_first: bool = False,
                 kept_heads: Optional[Sequence[int]] = None, original_num_heads: Optional[int] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"num_heads and head_dim must be >= 1, got {num_heads}, {head_dim}")
        factory = {"device": device, "dtype": dtype}
        inner = num_heads * head_dim
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        # Original indices of the heads held, to read per-head masks written for the unpruned module.
        self.kept_heads = tuple(kept_heads) if kept_heads is not None else tuple(range(num_heads))
        if len(self.kept_heads) != num_heads:
            raise ValueError(f"kept_heads has {len(self.kept_heads)} entries for {num_heads} heads")
        self.original_num_heads = original_num_heads if original_num_heads is not None else num_heads
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias, **factory)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.zeros(1, 1, inner, **factory))
            self.bias_v = nn.Parameter(torch.zeros(1, 1, inner, **factory))
        else:
            self.bias_k = self.bias_v = None

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention,
                                 keep_heads: Optional[Sequence[int]] = None) -> "PrunedMultiheadAttention":
        """Copy of `mha` restricted to `keep_heads` (original indices; default all heads)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be an nn.MultiheadAttention, got {type(mha).__name__}")
        keep = list(range(mha.num_heads)) if keep_heads is None else sorted(keep_heads)
        if not keep or keep[0] < 0 or keep[-1] >= mha.num_heads or len(set(keep)) != len(keep):
            raise ValueError(f"keep_heads must be distinct indices in [0, {mha.num_heads}), got {keep_heads}")
        weight = mha.out_proj.weight
        new = cls(mha.embed_dim, len(keep), mha.head_dim, kdim=mha.kdim, vdim=mha.vdim,
                  bias=mha.in_proj_bias is not None, add_bias_kv=mha.bias_k is not None,
                  add_zero_attn=mha.add_zero_attn, dropout=mha.dropout, batch_first=mha.batch_first,
                  kept_heads=keep, original_num_heads=mha.num_heads, device=weight.device, dtype=weight.dtype)
        index = _channels(keep, mha.head_dim).to(weight.device)
        with torch.no_grad():
            for target, (w, b) in zip((new.q_proj, new.k_proj, new.v_proj), _mha_in_projections(mha)):
                target.weight.copy_(w.index_select(0, index))
                if b is not None:
                    target.bias.copy_(b.index_select(0, index))
            new.out_proj.weight.copy_(mha.out_proj.weight.index_select(1, index))
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
            if mha.bias_k is not None:
                new.bias_k.copy_(mha.bias_k.index_select(2, index))
                new.bias_v.copy_(mha.bias_v.index_select(2, index))
        new.requires_grad_(weight.requires_grad)
        new.train(mha.training)
        return new

    def prune_heads(self, heads: Iterable[int]) -> None:
        """Remove the given current heads in place (at least one must remain)."""
        remove = set(heads)
        keep = [h for h in range(self.num_heads) if h not in remove]
        if not keep or not remove <= set(range(self.num_heads)):
            raise ValueError(f"heads must be indices in [0, {self.num_heads}) leaving at least one head, "
                             f"got {sorted(remove)}")
        index = _channels(keep, self.head_dim)
        self.q_proj = _sliced_linear(self.q_proj, rows=index)
        self.k_proj = _sliced_linear(self.k_proj, rows=index)
        self.v_proj = _sliced_linear(self.v_proj, rows=index)
        self.out_proj = _sliced_linear(self.out_proj, cols=index)
        if self.bias_k is not None:
            self.bias_k = nn.Parameter(self.bias_k.detach().index_select(2, index.to(self.bias_k.device)),
                                       requires_grad=self.bias_k.requires_grad)
            self.bias_v = nn.Parameter(self.bias_v.detach().index_select(2, index.to(self.bias_v.device)),
                                       requires_grad=self.bias_v.requires_grad)
        self.kept_heads = tuple(self.kept_heads[h] for h in keep)
        self.num_heads = len(keep)

    def _current_head_mask(self, attn_mask: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        """A 3-D per-head attn_mask written for the original heads -> the rows of the kept heads."""
        if (attn_mask is None or attn_mask.dim() != 3 or self.original_num_heads == self.num_heads
                or attn_mask.shape[0] != batch * self.original_num_heads):
            return attn_mask
        shaped = attn_mask.view(batch, self.original_num_heads, *attn_mask.shape[1:])
        kept = torch.as_tensor(self.kept_heads, device=attn_mask.device)
        return shaped.index_select(1, kept).reshape(batch * self.num_heads, *attn_mask.shape[1:])

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if query.dim() == 3:
            batch = query.shape[0] if self.batch_first else query.shape[1]
        else:
            batch = 1
        return _multihead_attention(
            query, key, value, project_q=self.q_proj, project_k=self.k_proj, project_v=self.v_proj,
            project_out=self.out_proj, num_heads=self.num_heads, head_dim=self.head_dim,
            batch_first=self.batch_first, bias_k=self.bias_k, bias_v=self.bias_v,
            add_zero_attn=self.add_zero_attn, dropout_p=self.dropout, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=self._current_head_mask(attn_mask, batch),
            average_attn_weights=average_attn_weights, is_causal=is_causal)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"kept_heads={list(self.kept_heads)}, batch_first={self.batch_first}")


def _mha_in_projections(mha: nn.MultiheadAttention):
    """((w_q, b_q), (w_k, b_k), (w_v, b_v)) of an nn.MultiheadAttention, either weight layout."""
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.chunk(3)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
    return tuple(zip(weights, biases))


def _gated_torch_mha_forward(mha: nn.MultiheadAttention, gate: torch.Tensor, query, key, value,
                             key_padding_mask=None, need_weights=True, attn_mask=None,
                             average_attn_weights=True, is_causal=False):
    """nn.MultiheadAttention.forward with a head gate: torch applies out_proj inside
    F.multi_head_attention_forward, where no hook can reach, so the attention is written out."""
    (w_q, b_q), (w_k, b_k), (w_v, b_v) = _mha_in_projections(mha)
    return _multihead_attention(
        query, key, value, project_q=partial(F.linear, weight=w_q, bias=b_q),
        project_k=partial(F.linear, weight=w_k, bias=b_k), project_v=partial(F.linear, weight=w_v, bias=b_v),
        project_out=partial(F.linear, weight=mha.out_proj.weight, bias=mha.out_proj.bias),
        num_heads=mha.num_heads, head_dim=mha.head_dim, batch_first=mha.batch_first,
        bias_k=mha.bias_k, bias_v=mha.bias_v, add_zero_attn=mha.add_zero_attn,
        dropout_p=mha.dropout, training=mha.training, key_padding_mask=key_padding_mask,
        need_weights=need_weights, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
        is_causal=is_causal, head_gate=gate)


# --------------------------------------------------------------------------------------------
# Per-architecture adapters: where the heads live and how to cut them out
# --------------------------------------------------------------------------------------------

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


def _module_device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


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


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every supported attention module of `model`, keyed by dotted name (the keys used by
    head_importance, head_gates and prune_heads)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if _adapter_for(m) is not None}


def _attention_module(model: nn.Module, name: str) -> tuple[nn.Module, _Adapter]:
    if not isinstance(name, str):
        raise TypeError(f"attention module names must be strings, got {name!r}")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"model has no module named {name!r}") from None
    adapter = _adapter_for(module)
    if adapter is None:
        raise TypeError(f"module {name!r} is a {type(module).__name__}, not a supported attention "
                        f"module ({SUPPORTED})")
    return module, adapter


def head_counts(model: nn.Module) -> dict[str, int]:
    """Number of heads of every supported attention module, by dotted name."""
    return {name: _adapter_for(m).layout(m).num_heads for name, m in attention_modules(model).items()}


# --------------------------------------------------------------------------------------------
# Gates and importance
# --------------------------------------------------------------------------------------------

def _gate_input_hook(gate: torch.Tensor, head_dim: int, module: nn.Module, args: tuple):
    hidden = args[0]
    return (hidden * gate.repeat_interleave(head_dim).to(hidden.dtype),) + tuple(args[1:])


@contextmanager
def head_gates(model: nn.Module, names: Optional[Iterable[str]] = None) -> Iterator[dict[str, torch.Tensor]]:
    """Attach a gate of ones (float32, requires_grad) per head of each attention module.

    Inside the `with` block every head's output is multiplied by its gate before the output
    projection; set a gate entry to 0 to silence a head, or differentiate a loss with respect to
    the gates. Hooks are removed on exit.

    Args:
        model: the model.
        names: attention modules to gate (default: all, see `attention_modules`).
    Yields:
        dict name -> gate tensor [num_heads].
    """
    modules = attention_modules(model) if names is None else \
        {name: _attention_module(model, name)[0] for name in names}
    handles, overridden = [], []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        gates = {}
        for name, module in modules.items():
            adapter = _adapter_for(module)
            layout = adapter.layout(module)
            gate = torch.ones(layout.num_heads, device=_module_device(module),
                              dtype=torch.float32, requires_grad=True)
            target = adapter.gate_target(module)
            if target is None:
                module.forward = partial(_gated_torch_mha_forward, module, gate)
                overridden.append(module)
            else:
                handles.append(target.register_forward_pre_hook(partial(_gate_input_hook, gate, layout.head_dim)))
            gates[name] = gate
        if overridden:  # nn.TransformerEncoderLayer's fused path would bypass the gated forward
            torch.backends.mha.set_fastpath_enabled(False)
        yield gates
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()
        for module in overridden:
            del module.forward


def _weight_norm_importance(model: nn.Module) -> dict[str, torch.Tensor]:
    scores = {}
    for name, module in attention_modules(model).items():
        adapter = _adapter_for(module)
        layout = adapter.layout(module)
        weight = adapter.out_weight(module).float()
        scores[name] = weight.reshape(weight.shape[0], layout.num_heads, layout.head_dim) \
            .pow(2).sum(dim=(0, 2)).sqrt().cpu()
    return scores


def head_importance(model: nn.Module, batches: Optional[Iterable[Any]] = None,
                    loss_fn: Optional[Callable[[nn.Module, Any], torch.Tensor]] = None, *,
                    method: str = "gradient", progress: bool = False) -> dict[str, torch.Tensor]:
    """Importance of every attention head; low = safe to prune.

    method="gradient" (Michel et al. 2019): mean over batches of |dL/d gate_h|, gates of ones
    scaling each head's input to the output projection; the model runs in eval mode (no dropout)
    and parameters' .grad are left untouched. method="weight_norm": L2 norm of each head's columns
    of the output projection (needs no data).

    Args:
        model: model holding supported attention modules (see `attention_modules`).
        batches: iterable of batches (gradient method).
        loss_fn: loss_fn(model, batch) -> scalar loss tensor (gradient method).
        method: "gradient" or "weight_norm".
        progress: show a tqdm bar over batches.
    Returns:
        dict attention-module name -> float32 CPU tensor [num_heads].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not attention_modules(model):
        raise ValueError(f"model has no supported attention modules ({SUPPORTED})")
    if method == "weight_norm":
        return _weight_norm_importance(model)
    if batches is None or loss_fn is None:
        raise ValueError("method='gradient' needs batches and loss_fn (or use method='weight_norm')")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    from tqdm.auto import tqdm

    modes = [(m, m.training) for m in model.modules()]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grad_flags:  # only the gates need gradients
        p.requires_grad_(False)
    try:
        with head_gates(model) as gates, torch.enable_grad():
            names = list(gates)
            totals = {name: torch.zeros(gates[name].numel()) for name in names}
            count = 0
            for batch in tqdm(batches, desc="head importance", disable=not progress):
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError("loss_fn must return a scalar tensor, got "
                                    f"{type(loss).__name__}{tuple(getattr(loss, 'shape', ()))}")
                if not loss.requires_grad:
                    raise ValueError("loss does not depend on any attention head: does loss_fn run the model?")
                grads = torch.autograd.grad(loss.reshape(()), [gates[n] for n in names], allow_unused=True)
                for name, grad in zip(names, grads):
                    if grad is not None:
                        totals[name] += grad.detach().abs().float().cpu()
                count += 1
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    if count == 0:
        raise ValueError("batches is empty")
    return {name: total / count for name, total in totals.items()}


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------

def _validate_heads(model: nn.Module, heads: Mapping[str, Iterable[int]]):
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads must be a dict name -> list of head indices, got {type(heads).__name__}")
    plan = []
    for name, indices in heads.items():
        module, adapter = _attention_module(model, name)
        layout = adapter.layout(module)
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
            raise TypeError(f"heads[{name!r}] must be a list of head indices, got {indices!r}")
        indices = list(indices)
        for h in indices:
            if isinstance(h, bool) or not isinstance(h, int):
                raise TypeError(f"heads[{name!r}] holds {h!r}; head indices must be ints")
            if not 0 <= h < layout.num_heads:
                raise ValueError(f"head index {h} out of range for {name!r}, which has {layout.num_heads} heads")
        if len(set(indices)) != len(indices):
            raise ValueError(f"heads[{name!r}] repeats an index: {indices}")
        if not indices:
            continue
        if len(indices) == layout.num_heads:
            raise ValueError(f"heads[{name!r}] would remove all {layout.num_heads} heads; keep at least one")
        if layout.group_size > 1:
            groups = {h // layout.group_size for h in indices}
            whole = {g * layout.group_size + i for g in groups for i in range(layout.group_size)}
            if whole != set(indices):
                raise ValueError(
                    f"{name!r} uses grouped-query attention ({layout.group_size} query heads share each "
                    f"key/value head); prune whole groups: {sorted(whole)} instead of {sorted(indices)}")
        adapter.check_prunable(name, module)
        plan.append((name, module, adapter, sorted(indices)))
    return plan


def prune_heads(model: nn.Module, heads: Mapping[str, Iterable[int]]) -> None:
    """Remove attention heads in place.

    Cuts the heads' rows of the q/k/v projections and columns of the output projection (and
    replaces nn.MultiheadAttention by PrunedMultiheadAttention). Everything is validated before
    the model is touched.

    Args:
        model: model holding the attention modules.
        heads: dict attention-module name (see `attention_modules`) -> current head indices to
            remove. Grouped-query Llama attention takes only whole key/value groups.
    Raises:
        ValueError: unknown name, index out of range or repeated, all heads of a module, partial
            GQA group. TypeError: unsupported module type or already-swapped projections.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for name, module, adapter, indices in _validate_heads(model, heads):
        adapter.prune(model, name, module, indices)


@dataclass
class HeadPruningReport:
    """What prune_heads_by_importance removed."""
    pruned: dict[str, list[int]]
    heads_before: dict[str, int]
    heads_after: dict[str, int]
    params_before: int
    params_after: int
    scope: str = "global"
    amount: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def heads_removed(self) -> int:
        return sum(self.heads_before.values()) - sum(self.heads_after.values())

    def __str__(self) -> str:
        width = max([len("module")] + [len(n) for n in self.heads_before])
        lines = [f"{'module':{width}s} {'before':>6s} {'after':>6s}  pruned heads"]
        for name, before in self.heads_before.items():
            lines.append(f"{name:{width}s} {before:6d} {self.heads_after[name]:6d}  {self.pruned.get(name, [])}")
        total_before, total_after = sum(self.heads_before.values()), sum(self.heads_after.values())
        lines.append(f"heads {total_before} -> {total_after} ({self.heads_removed} removed, scope={self.scope}, "
                     f"amount={self.amount:g}); params {self.params_before:,} -> {self.params_after:,} "
                     f"({1 - self.params_after / max(self.params_before, 1):.1%} fewer)")
        lines.extend(self.notes)
        return "\n".join(lines)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _select_heads(units: list[tuple[float, str, int, int]], budget: dict[str, int], target: int) -> dict[str, list[int]]:
    """Greedy: lowest-scoring units first, each within its module's budget, up to `target` heads."""
    chosen: dict[str, list[int]] = {}
    taken = 0
    for _, name, first, size in sorted(units, key=lambda u: u[0]):
        if taken == target:
            break
        if taken + size <= target and budget[name] >= size:
            chosen.setdefault(name, []).extend(range(first, first + size))
            budget[name] -= size
            taken += size
    return {name: sorted(h) for name, h in chosen.items()}


def prune_heads_by_importance(model: nn.Module, scores: Mapping[str, torch.Tensor], amount: float, *,
                              scope: str = "global", min_heads: int = 1,
                              normalize: bool = True) -> HeadPruningReport:
    """Prune the lowest-scoring heads (scores from `head_importance`).

    Args:
        model: the model; only modules named in `scores` are considered.
        scores: dict attention-module name -> tensor [num_heads] (higher = more important).
        amount: fraction of the considered heads to remove, in [0, 1).
        scope: "global" ranks all heads together (each module's scores divided by their L2 norm
            first when `normalize`, as in Michel et al.); "layer" removes `amount` of every module.
        min_heads: heads every module keeps at least.
        normalize: per-module L2 normalisation for scope="global".
    Returns:
        HeadPruningReport (heads and parameters before/after; str() is a table).
    With grouped-query attention a key/value group is the unit (scored by its heads' mean) and the
    number removed is the closest reachable without exceeding the target.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(min_heads, bool) or not isinstance(min_heads, int) or min_heads < 1:
        raise ValueError(f"min_heads must be an int >= 1, got {min_heads!r}")
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty dict name -> tensor [num_heads] (see head_importance)")
    layouts, units, budget, totals = {}, [], {}, 0
    for name, score in scores.items():
        module, adapter = _attention_module(model, name)
        layout = adapter.layout(module)
        if not isinstance(score, torch.Tensor) or score.shape != (layout.num_heads,):
            raise ValueError(f"scores[{name!r}] must be a tensor of shape ({layout.num_heads},), got "
                             f"{tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
        score = score.detach().double().cpu()
        if not bool(torch.isfinite(score).all()):
            raise ValueError(f"scores[{name!r}] holds inf or nan")
        if normalize and scope == "global" and score.norm() > 0:
            score = score / score.norm()
        layouts[name] = layout
        group = layout.group_size
        kept_units = -(-min_heads // group)
        budget[name] = max(layout.num_heads - kept_units * group, 0)
        totals += layout.num_heads
        units.extend((float(score[u * group:(u + 1) * group].mean()), name, u * group, group)
                     for u in range(layout.num_heads // group))

    if scope == "global":
        chosen = _select_heads(units, budget, round(amount * totals))
    else:
        chosen = {}
        for name, layout in layouts.items():
            own = [u for u in units if u[1] == name]
            chosen.update(_select_heads(own, dict(budget), round(amount * layout.num_heads)))
    heads_before = {name: layout.num_heads for name, layout in layouts.items()}
    params_before = _param_count(model)
    prune_heads(model, chosen)
    heads_after = {name: _adapter_for(model.get_submodule(name)).layout(model.get_submodule(name)).num_heads
                   for name in layouts}
    removed, target = sum(len(h) for h in chosen.values()), round(amount * totals)
    notes = [f"note: removed {removed} of the {target} heads asked (min_heads={min_heads} or whole GQA groups)"] \
        if scope == "global" and removed < target else []
    return HeadPruningReport(pruned=chosen, heads_before=heads_before, heads_after=heads_after,
                             params_before=params_before, params_after=_param_count(model),
                             scope=scope, amount=float(amount), notes=notes)
