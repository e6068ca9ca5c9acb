"""Built-in Llama-shaped model configurations for the whole-model benchmark (random weights: decode
speed depends on shapes and bytes, not on what the weights learned)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    summary: str

    def hf_config(self, max_positions: int = 2048):
        from transformers import LlamaConfig
        return LlamaConfig(
            hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, vocab_size=self.vocab,
            max_position_embeddings=max_positions, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


SHAPES: dict[str, ModelShape] = {s.name: s for s in (
    ModelShape("tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000, "TinyLlama-1.1B (22 layers, GQA 32/4)"),
    ModelShape("llama-7b-4l", 4096, 11008, 4, 32, 32, 32000, "Llama-2-7B shape, first 4 of 32 layers"),
    ModelShape("tiny", 256, 704, 2, 4, 2, 512, "a toy model for tests"),
)}


def build_model(shape: ModelShape, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A LlamaForCausalLM of `shape` with seeded random weights (normal, std 0.02 as HF initialises;
    norms 1), in eval mode. Built on the meta device and filled once: no throw-away init pass."""
    from transformers import LlamaForCausalLM
    config = shape.hf_config()
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    rotary = model.model.rotary_emb  # its inv_freq buffer was left empty by to_empty
    model.model.rotary_emb = type(rotary)(config=config)
    return model.to(dtype).eval()
