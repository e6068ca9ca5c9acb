"""`PrunedMultiheadAttention`: nn.MultiheadAttention with any number of heads, and the written-out
multi-head attention math it shares with the gated view of nn.MultiheadAttention.

Head pruning (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?") needs both:
nn.MultiheadAttention requires embed_dim == num_heads * head_dim, so it cannot hold fewer heads, and
it applies its output projection inside F.multi_head_attention_forward, where no hook can gate a
head. `_multihead_attention` reproduces torch's math with the head count free and an optional
per-head gate on each head's context.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


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
