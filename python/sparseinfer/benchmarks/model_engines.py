"""The engines the whole-model benchmark compares: plain PyTorch (fp32, bf16, quantize_dynamic),
every registered sparseinfer format (from the registry: its options and bench sparsities), and
llama.cpp on a GGUF of the same weights. Each engine turns the shared fp32 model into its own."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from .. import registry
from ..swap import sparsify

HEAD = "lm_head"
# what a sparse format's model gives the layers it cannot take (the head: dense, not pruned)
DEFAULT_HEAD_FALLBACK = ("int8", {"act": "none"})
LLAMA_CPP_QTYPES = ("F32", "BF16", "Q8_0", "Q4_0")


@dataclass
class Engine:
    name: str
    kind: str                                   # "torch", "sparseinfer" or "llama.cpp"
    build: Optional[Callable[[nn.Module], nn.Module]] = None  # fp32 model -> this engine's model
    qtype: Optional[str] = None                 # llama.cpp only
    details: dict = field(default_factory=dict)


def _bf16(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16)


def _torch_dynamic_int8(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)


def _option_text(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items() if v is not None)


def _format_builder(spec, options: dict, sparsity: Optional[float], fallback) -> Callable[[nn.Module], nn.Module]:
    def build(model: nn.Module) -> nn.Module:
        model = copy.deepcopy(model)
        if spec.prune is not None:
            with torch.no_grad():
                for name, module in model.named_modules():
                    if isinstance(module, nn.Linear) and name != HEAD:
                        module.weight.copy_(spec.prune(module.weight, sparsity))
        report = sparsify(model, spec.name, fallback=fallback if spec.prune is not None else None, **options)
        build.report = report
        return model
    return build


def format_engines(formats: Optional[list[str]] = None, sparsities: Optional[list[float]] = None,
                   head_fallback=DEFAULT_HEAD_FALLBACK) -> list[Engine]:
    """One engine per registered format x option variant x bench sparsity (pruned formats prune
    every Linear but the head, which gets `head_fallback`; None keeps it dense fp32)."""
    engines = []
    for spec in registry.FORMATS.values():
        if formats is not None and spec.name not in formats:
            continue
        if "cpu" not in spec.devices:
            continue
        levels = (sparsities or spec.bench_sparsities) if spec.tunable_sparsity else (
            (0.5,) if spec.prune is not None else (None,))
        for options in spec.variants():
            for sparsity in levels:
                label = spec.name
                if spec.tunable_sparsity:
                    label += f" {round(sparsity * 100)}%"
                if options:
                    label += f" ({_option_text(options)})"
                details = {"format": spec.name, "options": options, "sparsity": sparsity,
                           "head": (f"{head_fallback[0]} ({_option_text(head_fallback[1])})"
                                    if spec.prune is not None and head_fallback else
                                    "dense fp32" if spec.prune is not None else spec.name)}
                engines.append(Engine(label, "sparseinfer", _format_builder(spec, options, sparsity, head_fallback),
                                      details=details))
    return engines


def torch_engines() -> list[Engine]:
    return [Engine("torch fp32", "torch", lambda m: m, details={"dtype": "float32"}),
            Engine("torch bf16", "torch", _bf16, details={"dtype": "bfloat16"}),
            Engine("torch quantize_dynamic int8", "torch", _torch_dynamic_int8, details={"dtype": "qint8 (fbgemm)"})]


def llama_cpp_engines(qtypes=LLAMA_CPP_QTYPES) -> list[Engine]:
    return [Engine(f"llama.cpp {q}", "llama.cpp", qtype=q, details={"qtype": q}) for q in qtypes]


def llama_cpp_missing() -> Optional[str]:
    """Why llama.cpp rows cannot run here, or None."""
    for module, extra in (("llama_cpp", "llama-cpp-python"), ("gguf", "gguf")):
        try:
            __import__(module)
        except ImportError as err:
            return f"{extra} is not installed ({err}); pip install '.[llama]' adds it"
    return None


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights a batch-1 decode step reads: every Linear-like layer's weight (and bias)
    in its stored form; embeddings read one row (ignored) and norms are negligible but counted."""
    from .decode import linear_modules
    total = 0
    for module in linear_modules(model).values():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):  # torch quantized Linear
            w = weight()
            total += w.numel() * w.element_size()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                total += w.q_per_channel_scales().numel() * 8
        elif isinstance(weight, torch.Tensor):
            total += weight.numel() * weight.element_size()
        else:
            total += weight.nbytes()
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            total += bias.numel() * bias.element_size()
    for name, p in model.named_parameters():
        if "norm" in name:
            total += p.numel() * p.element_size()
    return total


def gguf_bytes_per_token(path) -> int:
    """Bytes of a GGUF's tensors but the token embedding (one row of it is read per token)."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")
