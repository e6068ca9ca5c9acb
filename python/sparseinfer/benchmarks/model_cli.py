"""Arguments and entry of `sparseinfer bench-model` (the CLI module only wires them in)."""
from __future__ import annotations

import argparse

import torch

from .model_configs import SHAPES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench-model", help="end-to-end batch-1 generation (prefill and decode tok/s) of a Llama-shaped "
                            "model in every format, plain PyTorch and llama.cpp, same run")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama-1.1b",
                   help="built-in model shape with random weights (default tinyllama-1.1b; "
                        + "; ".join(f"{s.name}: {s.summary}" for s in SHAPES.values()) + ")")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="a local Hugging Face causal-LM directory instead of --shape (loaded with "
                        "transformers, no remote code)")
    p.add_argument("--engines", nargs="+", metavar="NAME", default=None,
                   help="keep only engines whose name contains one of these (e.g. 'int8' 'Q8_0' 'csr 70')")
    p.add_argument("--format", nargs="+", dest="formats", default=None,
                   help="registered formats to run (default: all)")
    p.add_argument("--sparsity", nargs="+", type=float, default=None,
                   help="sparsities for the pruned formats with tunable sparsity (default: the registry's)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per rep (default 64)")
    p.add_argument("--reps", type=int, default=3, help="timed generations per engine (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--isa", default=None, help="force a sparseinfer CPU tier (as SPARSEINFER_CPU_ISA)")
    p.add_argument("--decoder", choices=("sparseinfer", "hf"), default="sparseinfer",
                   help="decode loop of the sparseinfer rows: sparseinfer.generate (default; Llama family, "
                        "few ops per layer) or Hugging Face generate; plain PyTorch rows always use HF generate")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when installed")
    p.add_argument("--no-glue", action="store_true",
                   help="skip the hooked run that splits a token into Linear time and the rest")
    p.add_argument("--gguf-cache", default=None,
                   help="where GGUF files of the weights are kept (default $SPARSEINFER_GGUF_CACHE or "
                        "~/.cache/sparseinfer/gguf)")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="write PREFIX.json, PREFIX.txt and PREFIX.png (default: print only)")


def run(args) -> int:
    from ..runtime import set_cpu_isa
    from .model_bench import ModelBenchConfig, format_table, run as run_bench, write
    for name, value, low in (("--prompt", args.prompt, 1), ("--new-tokens", args.new_tokens, 2),
                             ("--reps", args.reps, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if args.isa:
        set_cpu_isa(args.isa)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    config = ModelBenchConfig(
        shape=args.shape, model_dir=args.model, prompt_tokens=args.prompt, new_tokens=args.new_tokens,
        reps=args.reps, threads=args.threads, engines=args.engines, formats=args.formats,
        sparsities=args.sparsity, llama_cpp=not args.no_llama_cpp, glue=not args.no_glue,
        gguf_cache=args.gguf_cache, decoder=args.decoder)
    doc = run_bench(config, progress=True)
    print(format_table(doc))
    if args.out:
        json_path, png = write(doc, args.out)
        print(f"wrote {json_path}" + (f" and {png}" if png else " (no plot: matplotlib is not installed)"))
    return 0
