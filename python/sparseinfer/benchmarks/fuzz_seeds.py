"""The tiny, real checkpoints `sparseinfer fuzz-load` mutates: one per stored layout (sparse-bitmask,
sparse-24-bitmask, int-quantized per channel and per group, pack-quantized 8-bit and 4-bit
asymmetric, sparseinfer-codebook, dense, a sharded one)
and, when transformers is installed, a 1-layer Llama with mixed csr + int8 layers loaded from its
own config.json. Deterministic: the same bytes on every run (fixed seeds, no timestamps)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..checkpoint import save
from ..compress import prune_2_4
from ..swap import sparsify


def mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Three Linear layers (the last without bias) with awkward widths; the load target."""
    return nn.Sequential(nn.Linear(72, 130), nn.ReLU(), nn.Linear(130, 64), nn.GELU(),
                         nn.Linear(64, 24, bias=False)).to(dtype)


def _pruned_mlp(kind: str, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    model = mlp(dtype).eval()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                w = layer.weight
                if kind == "csr":
                    w[torch.rand(w.shape) < 0.8] = 0
                elif kind == "2:4":
                    w.copy_(prune_2_4(w.float()).to(dtype))
    return model


def _compressed(fmt: str, dtype=torch.float32, **options) -> nn.Module:
    model = _pruned_mlp(fmt, dtype)
    sparsify(model, fmt, **options)
    return model


@dataclass(frozen=True)
class Seed:
    """How to write one seed checkpoint and how a fuzz case loads and runs it."""
    name: str
    write: Callable[[str], None]
    model: Optional[Callable[[], nn.Module]]   # the load target; None: built from config.json
    hf: bool = False                          # a Hugging Face config.json (model_type, architectures)
    dtype: torch.dtype = torch.float32

    def run(self, model: nn.Module) -> None:
        """One forward pass of a loaded model: whatever loads must run."""
        with torch.no_grad():
            if self.hf:
                model(input_ids=torch.tensor([[1, 5, 9, 2]]))
            else:
                model(torch.randn(2, 72).to(self.dtype))


def _mlp_seed(name: str, fmt: Optional[str], dtype=torch.float32, save_options=None, **options) -> Seed:
    def write(directory: str) -> None:
        torch.manual_seed(0)
        model = _compressed(fmt, dtype, **options) if fmt else mlp(dtype)
        save(model, directory, **(save_options or {}))
    return Seed(name, write, lambda: mlp(dtype), dtype=dtype)


def _llama_config():
    import transformers
    return transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)


def _write_llama(directory: str) -> None:
    import transformers
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_llama_config()).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and ".mlp." in name:
                module.weight.mul_(torch.rand(module.weight.shape) > 0.8)
    sparsify(model, "csr", filter=lambda name, m: ".mlp." in name)
    sparsify(model, "int8", filter=lambda name, m: ".self_attn." in name)
    save(model, directory)


def _have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def seeds() -> dict[str, Seed]:
    """Every seed this install can write (the Llama one needs transformers)."""
    found = [
        _mlp_seed("csr", "csr"),
        _mlp_seed("csr-bf16", "csr", torch.bfloat16),
        _mlp_seed("2:4", "2:4"),
        _mlp_seed("int8", "int8"),
        _mlp_seed("int8-group-weight-only", "int8", act="none", group_size=32),
        _mlp_seed("pack8", "int8", save_options={"quant_format": "pack-quantized"}),
        _mlp_seed("int4-asym", "int4", group_size=32, symmetric=False),
        _mlp_seed("codebook", "codebook", group_size=32),
        _mlp_seed("dense", None),
        _mlp_seed("sharded-csr", "csr", save_options={"max_shard_size": 8000}),
    ]
    if _have_transformers():
        found.append(Seed("llama", _write_llama, None, hf=True))
    return {s.name: s for s in found}


def write_seeds(root: str, chosen: dict[str, Seed]) -> dict[str, str]:
    """Write each seed checkpoint under root/<name>; returns name -> directory."""
    made = {}
    for name, seed in chosen.items():
        directory = os.path.join(root, name.replace(":", "_"))
        os.makedirs(directory)
        seed.write(directory)
        made[name] = directory
    return made
