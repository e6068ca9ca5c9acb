"""Conversion speed: `sparseinfer.sparsify`, `sparseinfer.save` and `sparseinfer.load` of a
Llama-shaped Hugging Face model (TinyLlama-1.1B shape by default, random weights, `layers`
decoder layers) in each format, against a dense safetensors save (``save_file`` of the state
dict) and load (``load_file`` + ``model.load_state_dict``, the copy into an existing model) of
the same model, in the same run. The goal (issue #17): every stage within 2x of the dense one.

The weights are pruned for each format before anything is timed (50% magnitude per layer for
csr, 2:4 magnitude for 2:4, none for int8); pruning is not part of the conversion. Files go to a
temporary directory (`workdir`); dirty pages are written back (os.sync) before every timed
stage, so a save is not throttled by the previous stage's writes, and loads read the page cache.
sparsify and load are compared with the dense load (load_file + copy), save with the dense save,
and every stage with their sum.

    python -m sparseinfer.benchmarks.conversion --layers 2
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..checkpoint import load, save
from ..formats.n_m import prune_2_4
from ..swap import sparsify
from .report import machine_info
from .report import results_json as _results_json
from .report import table

# TinyLlama-1.1B (22 layers in the real model)
TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
             "num_key_value_heads": 4, "vocab_size": 32000}
FORMATS = ("csr", "2:4", "int8")
OPTIONS = {"csr": {}, "2:4": {}, "int8": {"act": "dynamic"}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class StageResult:
    format: str          # "dense" (the baseline), "csr", "2:4", "int8"
    stage: str           # sparsify | save | load
    seconds: float       # median over repeats
    baseline_seconds: float = 0.0  # the dense stage it is compared with (save -> save, else load)
    ratio: float = 0.0   # seconds / baseline_seconds
    ratio_to_save_load: float = 0.0  # seconds / (dense save + dense load)
    file_bytes: int = 0


def build_model(layers: int, dtype: torch.dtype = torch.float32, seed: int = 0, shape: Optional[dict] = None) -> nn.Module:
    """A LlamaForCausalLM of the TinyLlama-1.1B shape (or `shape`) with `layers` decoder layers
    and random weights, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**{**TINYLLAMA, **(shape or {})}, num_hidden_layers=layers,
                         max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = LlamaForCausalLM(config).to(dtype)
        for p in model.parameters():  # HF init is mostly zero-mean normal; make every weight random
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return model.eval()


def _decoder_linears(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and ".layers." in f".{n}"]


def prune_for(model: nn.Module, fmt: str) -> nn.Module:
    """The decoder layers' Linears pruned for `fmt` in place (lm_head stays dense): 50% smallest
    |w| per layer for csr, 2:4 magnitude for 2:4, untouched for int8."""
    with torch.no_grad():
        for _, m in _decoder_linears(model):
            w = m.weight
            if fmt == "csr":
                flat = w.detach().abs().flatten().float()
                threshold = flat.kthvalue(max(1, flat.numel() // 2)).values
                w.masked_fill_(w.abs() <= threshold, 0)
            elif fmt == "2:4":
                w.copy_(prune_2_4(w))
    return model


def _settle() -> None:
    """Write back dirty pages before a timed file stage, so that it is not throttled by an earlier
    stage's writes (the page cache keeps the files: loads read from memory)."""
    if hasattr(os, "sync"):
        os.sync()


def _median_seconds(fn: Callable[[], object], repeats: int, setup: Callable[[], object] = _settle) -> float:
    samples = []
    for _ in range(repeats):
        setup()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _file_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.endswith(".safetensors"))


def time_dense(model: nn.Module, root: str, repeats: int) -> list[StageResult]:
    from safetensors.torch import load_file, save_file
    directory = os.path.join(root, "dense")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "model.safetensors")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_s = _median_seconds(lambda: save_file(state, path, metadata={"format": "pt"}), repeats)
    target = copy.deepcopy(model)
    load_s = _median_seconds(lambda: target.load_state_dict(load_file(path)), repeats)
    size = _file_bytes(directory)
    return [StageResult("dense", "save", save_s, file_bytes=size), StageResult("dense", "load", load_s, file_bytes=size)]


def time_format(pruned: nn.Module, fmt: str, root: str, repeats: int,
                progress: Callable[[str], None] = lambda s: None) -> list[StageResult]:
    directory = os.path.join(root, fmt.replace(":", "_"))
    holder: dict[str, nn.Module] = {}
    options = OPTIONS.get(fmt, {})

    def fresh():
        holder["model"] = copy.deepcopy(pruned)
        _settle()

    sparsify_s = _median_seconds(lambda: sparsify(holder["model"], fmt, **options), repeats, setup=fresh)
    progress(f"{fmt} sparsify {sparsify_s:.3f} s")
    converted = holder.pop("model")
    save_s = _median_seconds(lambda: save(converted, directory), repeats)
    progress(f"{fmt} save {save_s:.3f} s")
    load_s = _median_seconds(lambda: holder.__setitem__("loaded", load(directory)), repeats)
    progress(f"{fmt} load {load_s:.3f} s")
    size = _file_bytes(directory)
    return [StageResult(fmt, "sparsify", sparsify_s, file_bytes=size),
            StageResult(fmt, "save", save_s, file_bytes=size),
            StageResult(fmt, "load", load_s, file_bytes=size)]


def run(layers: int = 2, formats: Sequence[str] = FORMATS, out_dir: Optional[str] = None, repeats: int = 3,
        dtype: torch.dtype = torch.float32, workdir: Optional[str] = None,
        progress: Callable[[str], None] = lambda s: None, shape: Optional[dict] = None) -> dict:
    """Time every stage of every format and the dense baseline; returns the JSON document
    (written to `out_dir`/conversion_<layers>layers.json when out_dir is given). `shape`
    overrides LlamaConfig sizes (default TINYLLAMA), e.g. for a quick test."""
    for fmt in formats:
        if fmt not in OPTIONS:
            raise ValueError(f"unknown format {fmt!r}; choose from {list(OPTIONS)}")
    progress(f"building a {layers}-layer TinyLlama-shaped model ({dtype})")
    model = build_model(layers, dtype, shape=shape)
    results: list[StageResult] = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="sparseinfer-conversion-") as root:
        progress("dense save/load")
        results += time_dense(model, root, repeats)
        progress(f"dense save {results[-2].seconds:.3f} s, load+copy {results[-1].seconds:.3f} s")
        for fmt in formats:
            progress(f"{fmt}: prune (untimed), sparsify, save, load")
            pruned = prune_for(copy.deepcopy(model), fmt)
            results += time_format(pruned, fmt, root, repeats, progress)
            del pruned
    dense = {r.stage: r.seconds for r in results if r.format == "dense"}
    for r in results:
        r.baseline_seconds = dense["save"] if r.stage == "save" else dense["load"]
        r.ratio = r.seconds / r.baseline_seconds
        r.ratio_to_save_load = r.seconds / (dense["save"] + dense["load"])
    params = {"layers": layers, "formats": list(formats), "repeats": repeats, "dtype": str(dtype).replace("torch.", ""),
              "shape": {**TINYLLAMA, **(shape or {})}, "options": {f: OPTIONS[f] for f in formats},
              "baseline": "dense save = safetensors save_file(state_dict); dense load = load_file + "
                          "model.load_state_dict (copy into a built model); sparsify and load are compared "
                          "with the dense load, save with the dense save"}
    doc = _results_json(results, _machine(), benchmark="conversion", params=params)
    doc["table"] = format_table(results)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"conversion_{layers}layers.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        doc["path"] = path
    return doc


def _machine() -> dict:
    try:
        return machine_info()
    except Exception as exc:  # e.g. a native module older than the Python around it
        return {"threads": torch.get_num_threads(), "torch": torch.__version__, "cores": os.cpu_count(),
                "error": f"machine_info failed: {type(exc).__name__}: {exc}"}


def format_table(results: list[StageResult]) -> str:
    return table(results, [
        ("format", 7, lambda r: r.format), ("stage", 9, lambda r: r.stage),
        ("seconds", 8, lambda r: f"{r.seconds:.3f}"), ("file MB", 9, lambda r: f"{r.file_bytes / 1e6:.1f}"),
        ("vs dense", 9, lambda r: f"{r.ratio:.2f}x"), ("dense s", 8, lambda r: f"{r.baseline_seconds:.3f}"),
        ("vs dense save+load", 18, lambda r: f"{r.ratio_to_save_load:.2f}x")])


def add_parser(sub) -> argparse.ArgumentParser:
    """The `sparseinfer bench-convert` subcommand (runs run_from_args)."""
    parser = sub.add_parser("bench-convert", help="time sparsify / save / load of a TinyLlama-shaped model in each "
                                                  "format against a dense safetensors save and load+copy (same run)")
    add_arguments(parser)
    return parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparseinfer.benchmarks.conversion",
        description="time sparsify / save / load of a TinyLlama-shaped model in each format against a dense "
                    "safetensors save and load+copy of the same model (same run)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (TinyLlama-1.1B has 22; default 2)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage (median; default 3)")
    parser.add_argument("--out", default=None, help="directory for the JSON results")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: the system "
                        "temp directory; /dev/shm times the CPU work without the disk)")


def run_from_args(args) -> int:
    if args.layers < 1 or args.repeats < 1:
        raise SystemExit("--layers and --repeats must be >= 1")
    torch.set_grad_enabled(False)
    doc = run(args.layers, args.formats, args.out, args.repeats, DTYPES[args.dtype], args.workdir,
              progress=lambda s: print(f"[conversion] {s}", flush=True))
    print(doc["table"])
    if "path" in doc:
        print(f"wrote {doc['path']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
