"""sparseinfer.generate: greedy batch decoding of Llama-family Hugging Face models (Llama, Mistral
without a sliding window in reach, Qwen2) with few torch ops per layer.

Hugging Face's `generate` spends about a third of a batch-1 token outside the Linear layers once
those are fast (measured: 32% for int8 on a TinyLlama-1.1B shape, 2 threads): module dispatch,
a Cache object, rotary tables recomputed per step, seven ops per RMSNorm, logits processors. This
loop runs the same modules' weights (any sparseinfer layer, or nn.Linear) with a preallocated KV
cache, the rotary tables computed once by the model's own rotary module, fused `F.rms_norm` and
grouped-query `scaled_dot_product_attention`. Greedy tokens equal `model.generate(do_sample=False)`
(tested); anything it does not support raises ValueError naming it, so callers fall back to
`model.generate`."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .ops import decode as decode_ops

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def check_supported(model: nn.Module, total_len: Optional[int] = None) -> None:
    """ValueError naming why `model` cannot use this decoder (then use model.generate)."""
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ValueError(f"sparseinfer.generate supports {', '.join(SUPPORTED)}, not {name}; use model.generate")
    config = model.config
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act {act!r} is not supported (silu only); use model.generate")
    rope = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        raise ValueError(f"rope_scaling {rope} changes with the length; use model.generate")
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", name == "MistralForCausalLM") and window and total_len and total_len > window:
        raise ValueError(f"{total_len} tokens exceed the sliding window ({window}); use model.generate")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() first")


class _Layer:
    """One decoder layer's modules and constants, looked up once."""

    def __init__(self, layer, config, head_dim: int):
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.gate, self.up, self.down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.norm1, self.norm2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        self.eps = getattr(layer.input_layernorm, "variance_epsilon", getattr(config, "rms_norm_eps", 1e-6))
        self.scale = getattr(attn, "scaling", head_dim ** -0.5)


@torch.inference_mode()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
             eos_token_id: Optional[Union[int, Sequence[int]]] = None,
             on_token: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Greedy decoding: `input_ids` [batch, prompt] (no padding) followed by up to `max_new_tokens`
    tokens, as model.generate(input_ids, do_sample=False, max_new_tokens=...) returns them. Stops
    early once every sequence has produced an `eos_token_id` (None: never). `on_token(step)` is
    called after each new token (benchmarks time steps with it)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError("input_ids must be a [batch, tokens] int64 tensor")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids must hold at least one token")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    check_supported(model, total)
    config = model.config
    if input_ids.min() < 0 or input_ids.max() >= config.vocab_size:
        raise ValueError(f"input_ids must lie in [0, {config.vocab_size})")
    core = model.model
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    tp = getattr(model, "sparseinfer_tp", None)  # tensor parallel (sparseinfer.distributed): this rank's heads
    if tp is not None and tp.local_heads is not None:
        heads, kv_heads = tp.local_heads, tp.local_kv_heads
    layers = [_Layer(layer, config, head_dim) for layer in core.layers]
    dtype = core.embed_tokens.weight.dtype
    device = input_ids.device

    positions = torch.arange(total, device=device)[None]
    cos, sin = core.rotary_emb(core.embed_tokens.weight[:1], positions)  # [1, total, head_dim]
    cos, sin = cos[0].contiguous(), sin[0].contiguous()                  # [total, head_dim]
    keys = [torch.empty(batch, kv_heads, total, head_dim, dtype=dtype, device=device) for _ in layers]
    values = [torch.empty_like(k) for k in keys]
    eos = None if eos_token_id is None else torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    out = [input_ids]

    tokens, start = input_ids, 0
    for step in range(max_new_tokens):
        n = tokens.shape[1]
        end = start + n
        c, s = cos[start:end], sin[start:end]
        h = core.embed_tokens(tokens)
        for i, L in enumerate(layers):
            # RMSNorm and rotary run as one native pass each (fp32; ops/decode.py), else torch's
            x = decode_ops.rms_norm(h, L.norm1, L.eps)
            q = decode_ops.rope(L.q(x).view(batch, n, heads, head_dim), c, s).transpose(1, 2)
            k = decode_ops.rope(L.k(x).view(batch, n, kv_heads, head_dim), c, s).transpose(1, 2)
            v = L.v(x).view(batch, n, kv_heads, head_dim).transpose(1, 2)
            keys[i][:, :, start:end] = k
            values[i][:, :, start:end] = v
            a = F.scaled_dot_product_attention(
                q, keys[i][:, :, :end], values[i][:, :, :end],
                is_causal=n > 1, scale=L.scale, enable_gqa=kv_heads != heads)
            h = h + L.o(a.transpose(1, 2).reshape(batch, n, heads * head_dim))
            x = decode_ops.rms_norm(h, L.norm2, L.eps)
            h = h + L.down(F.silu(L.gate(x)) * L.up(x))
        h = F.rms_norm(h[:, -1:], (h.shape[-1],), core.norm.weight, core.norm.variance_epsilon)
        nxt = model.lm_head(h)[:, -1].argmax(-1)
        if eos is not None:
            nxt = torch.where(finished, torch.full_like(nxt, int(eos[0])), nxt)
            finished |= torch.isin(nxt, eos)
        out.append(nxt[:, None])
        if on_token is not None:
            on_token(step)
        if eos is not None and bool(finished.all()):
            break
        tokens, start = nxt[:, None], end
    return torch.cat(out, dim=1)
