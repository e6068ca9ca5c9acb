"""Checkpoint load time: Llama-7B-shaped decoder layers stored dense, 90%-sparse (sparse-bitmask)
and int8 (int-quantized), each loaded with sparseinfer.load into kernel-ready layers, against
safetensors.torch.load_file of the dense weights, in the same run (page cache warm for all)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import load, save
from ..swap import sparsify
from .report import results_json as _results_json
from .report import table
from .timing import median_ms

LLAMA_7B = {"hidden": 4096, "intermediate": 11008}


class _Norm(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))


class _Attention(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, nn.Linear(hidden, hidden, bias=False))


class _MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)


class _DecoderLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.input_layernorm = _Norm(hidden)
        self.self_attn = _Attention(hidden)
        self.post_attention_layernorm = _Norm(hidden)
        self.mlp = _MLP(hidden, intermediate)


def decoder_layers(layers: int, hidden: int, intermediate: int, dtype: torch.dtype, device="meta") -> nn.Module:
    """`layers` Llama decoder layers' parameters (names as in transformers), no forward needed."""
    with torch.device(device):
        model = nn.Module()
        model.layers = nn.ModuleList(_DecoderLayer(hidden, intermediate) for _ in range(layers))
    return model.to(dtype)


@dataclass
class LoadResult:
    name: str            # dense-load_file, dense-load_file+copy, dense, csr, int8
    what: str            # what is timed
    seconds: float       # median over repeats
    file_bytes: int
    ratio_to_load_file: float = 0.0  # seconds / dense load_file seconds (same run)
    ratio_to_load_file_copy: float = 0.0  # seconds / (load_file + copy) seconds (same run)


def write_checkpoints(root: str, layers: int, hidden: int, intermediate: int, sparsity: float,
                      dtype: torch.dtype, progress: Callable[[str], None] = lambda s: None) -> dict[str, str]:
    """Write the dense, sparse (CSR, `sparsity` unstructured) and int8 checkpoints of the same
    random weights (the dense and int8 ones hold the pruned weights too). Returns name -> dir."""
    generator = torch.Generator().manual_seed(0)
    model = decoder_layers(layers, hidden, intermediate, dtype, device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                w = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                w[torch.rand(p.shape, generator=generator) < sparsity] = 0
                p.copy_(w)
    dirs = {name: os.path.join(root, name) for name in ("dense", "csr", "int8")}
    progress("dense")
    os.makedirs(dirs["dense"], exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(dirs["dense"], "model.safetensors"))
    for fmt, directory in (("csr", dirs["csr"]), ("int8", dirs["int8"])):
        progress(fmt)
        sparse = decoder_layers(layers, hidden, intermediate, dtype, device="cpu")
        sparse.load_state_dict(model.state_dict())
        sparsify(sparse, fmt, min_sparsity=min(sparsity, 0.5))
        save(sparse, directory)
        del sparse
    return dirs


def _file_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".safetensors"))


def time_loads(dirs: dict[str, str], layers: int, hidden: int, intermediate: int, dtype: torch.dtype,
               repeats: int = 3, progress: Callable[[str], None] = lambda s: None) -> list[LoadResult]:
    dense_file = os.path.join(dirs["dense"], "model.safetensors")
    skeleton = lambda: decoder_layers(layers, hidden, intermediate, dtype)  # noqa: E731
    cases = [("dense-load_file", "safetensors.torch.load_file of the dense weights (tensors map the file: "
              "no copy)", dirs["dense"], lambda: load_file(dense_file)),
             ("dense-load_file+copy", "load_file, then every tensor copied into memory (what filling a "
              "model's parameters costs)", dirs["dense"],
              lambda: {k: v.clone() for k, v in load_file(dense_file).items()})]
    for name in ("dense", "csr", "int8"):
        cases.append((name, f"sparseinfer.load of the {name} checkpoint into a skeleton on meta "
                      "(validated, packed, kernel-ready)", dirs[name],
                      lambda name=name: load(dirs[name], skeleton())))
    results = []
    for name, what, directory, fn in cases:
        progress(name)
        # one warm-up load (page cache, allocator, lazy imports), then `repeats` timed one by one
        seconds = median_ms(fn, rounds=repeats, inner=1) / 1e3
        results.append(LoadResult(name, what, seconds, _file_bytes(directory)))
    for r in results:
        r.ratio_to_load_file = r.seconds / results[0].seconds
        r.ratio_to_load_file_copy = r.seconds / results[1].seconds
    return results


def format_table(results: list[LoadResult]) -> str:
    return table(results, [
        ("load", 22, lambda r: r.name), ("file MB", 9, lambda r: f"{r.file_bytes / 1e6:.1f}"),
        ("seconds", 8, lambda r: f"{r.seconds:.3f}"), ("vs load_file", 12, lambda r: f"{r.ratio_to_load_file:.2f}x"),
        ("vs load_file+copy", 17, lambda r: f"{r.ratio_to_load_file_copy:.2f}x")])


def results_json(results: list[LoadResult], params: dict) -> dict:
    return _results_json(results, benchmark="checkpoint load", params=params)
