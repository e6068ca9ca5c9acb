"""Times batch-1 greedy generation of a Hugging Face causal LM, through `model.generate` (what
users run) or `sparseinfer.generate` (the low-overhead loop for the Llama family): prefill
tokens/s, decode tokens/s (prefill excluded), and the share of each decode token spent in Linear
layers (the rest is glue: norms, rotary, attention, sampling, Python)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn


@dataclass
class DecodeTiming:
    prefill_tok_s: list[float] = field(default_factory=list)
    decode_tok_s: list[float] = field(default_factory=list)
    tokens: Optional[list[int]] = None  # the generated ids of the last rep (same in every rep)

    def summary(self) -> dict:
        def stats(values):
            return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None
        return {"prefill_tok_s": stats(self.prefill_tok_s), "decode_tok_s": stats(self.decode_tok_s),
                "reps": len(self.decode_tok_s)}


class _TokenClock:
    """Stamps the time each new token is produced (as an HF stopping criterion that never stops,
    or as sparseinfer.generate's on_token)."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids=None, scores=None, **kwargs):
        self.stamps.append(time.perf_counter())
        if isinstance(input_ids, torch.Tensor):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)
        return None


def prompt_ids(length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, length), generator=g)


def hf_generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int, clock=None) -> torch.Tensor:
    """Hugging Face `model.generate`, greedy, exactly new_tokens tokens."""
    from transformers import StoppingCriteriaList
    criteria = StoppingCriteriaList([clock]) if clock is not None else None
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                          stopping_criteria=criteria)


def fast_generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int, clock=None) -> torch.Tensor:
    """sparseinfer.generate (greedy, no eos stop)."""
    from ..generation import generate
    return generate(model, prompt, new_tokens, on_token=clock)


DECODERS = {"hf": hf_generate, "sparseinfer": fast_generate}


@torch.inference_mode()
def time_generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int = 64, reps: int = 3,
                  warmup: int = 1, decoder: str = "hf") -> DecodeTiming:
    """Decode tok/s = (new_tokens - 1) / time from the first to the last new token; prefill tok/s
    = prompt length / time to the first new token (prefill plus one sampling step)."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to time decoding, got {new_tokens}")
    run = DECODERS[decoder]
    for _ in range(warmup):
        run(model, prompt, min(new_tokens, 4))
    timing = DecodeTiming()
    for _ in range(reps):
        clock = _TokenClock()
        start = time.perf_counter()
        out = run(model, prompt, new_tokens, clock)
        stamps = clock.stamps
        timing.prefill_tok_s.append(prompt.shape[1] / (stamps[0] - start))
        timing.decode_tok_s.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        timing.tokens = out[0, prompt.shape[1]:].tolist()
    return timing


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that does a layer's matmul: nn.Linear and sparseinfer's layers."""
    from .. import registry
    kinds = (nn.Linear,) + tuple(spec.layer_cls for spec in registry.FORMATS.values())
    out = {name: m for name, m in model.named_modules() if isinstance(m, kinds)}
    for name, m in model.named_modules():  # torch quantize_dynamic's Linear
        if type(m).__name__ == "Linear" and type(m).__module__.startswith("torch.ao.nn.quantized"):
            out[name] = m
    return out


@torch.inference_mode()
def linear_share(model: nn.Module, prompt: torch.Tensor, new_tokens: int = 32, decoder: str = "hf") -> dict:
    """Per decode token: total ms, ms inside Linear layers (forward hooks), and the glue share.
    A separate, hooked run (hooks cost a few microseconds each, counted as glue)."""
    layers = linear_modules(model)
    spent = [0.0]
    decoding = [False]
    starts: dict[int, float] = {}

    def pre(module, args):
        starts[id(module)] = time.perf_counter()

    def post(module, args, output):
        if decoding[0]:
            spent[0] += time.perf_counter() - starts[id(module)]

    handles = [m.register_forward_pre_hook(pre) for m in layers.values()]
    handles += [m.register_forward_hook(post) for m in layers.values()]

    class Clock(_TokenClock):
        def __call__(self, *args, **kwargs):
            decoding[0] = True
            return super().__call__(*args, **kwargs)

    try:
        clock = Clock()
        DECODERS[decoder](model, prompt, new_tokens, clock)
    finally:
        for h in handles:
            h.remove()
    tokens = len(clock.stamps) - 1
    token_ms = (clock.stamps[-1] - clock.stamps[0]) / tokens * 1e3
    # the hooked time after the first stamp covers the forwards of tokens 2..n (plus the last
    # token's forward, which precedes its stamp), so per token it is spent / tokens
    linear_ms = spent[0] / tokens * 1e3
    return {"token_ms": token_ms, "linear_ms": linear_ms, "glue_ms": token_ms - linear_ms,
            "glue_share": max(0.0, 1 - linear_ms / token_ms), "linear_layers": len(layers)}


@torch.inference_mode()
def standalone_linear_ms(model: nn.Module, reps: int = 5) -> float:
    """ms to call every Linear layer of the model once at m=1 outside the model, in model order (so
    the working set is the whole model's weights, as in decoding): what the layers cost alone."""
    layers = list(linear_modules(model).values())
    inputs = []
    for m in layers:
        in_features = m.in_features if hasattr(m, "in_features") else m.weight().shape[1]
        dtype = torch.float32
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.is_floating_point():
            dtype = w.dtype
        elif hasattr(m, "dtype") and isinstance(m.dtype, torch.dtype):
            dtype = m.dtype
        inputs.append(torch.randn(1, 1, in_features).to(dtype))
    samples = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        for m, x in zip(layers, inputs):
            m(x)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[1:]) * 1e3
