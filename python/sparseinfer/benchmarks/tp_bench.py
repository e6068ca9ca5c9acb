"""Tensor-parallel decode on one machine: batch-1 greedy decode tok/s of a Llama-shaped model in
one process with T threads against W processes with T / W threads each, joined by gloo
(sparseinfer.distributed), from the same checkpoint (each rank loads only its shard); plus a
paper estimate of the all-reduce cost per token on a real cluster.

    python -m sparseinfer.benchmarks.tp_bench --shape tinyllama-1.1b --format int8 --out FILE.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from typing import Optional

import torch

# Llama-2-70B: 80 layers, hidden 8192 (the estimate's default model)
LLAMA_70B = {"name": "llama-2-70b", "hidden": 8192, "layers": 80, "vocab": 32000}


def allreduce_estimate(hidden: int = 8192, layers: int = 80, vocab: int = 32000, world: int = 8,
                       link_gbps: float = 100.0, act_bytes: int = 2, latency_us: float = 10.0) -> dict:
    """Paper estimate of one decode token's collectives under Megatron tensor parallelism (two
    all-reduces of `hidden` activations per layer, one all-gather of the logits): ring all-reduce
    sends 2 (W-1)/W of the message per rank in 2 (W-1) latency-bound steps; the latency term uses
    recursive doubling (2 log2 W steps), as NCCL / gloo do for small messages."""
    import math
    message = hidden * act_bytes
    per_rank_bytes = 2 * layers * 2 * (world - 1) / world * message + (world - 1) / world * vocab * 4
    link = link_gbps * 1e9 / 8
    bandwidth_ms = per_rank_bytes / link * 1e3
    steps_ring = 2 * layers * 2 * (world - 1) + (world - 1)
    steps_tree = 2 * layers * 2 * math.ceil(math.log2(world)) + math.ceil(math.log2(world))
    return {"hidden": hidden, "layers": layers, "world": world, "link_gbps": link_gbps, "act_bytes": act_bytes,
            "latency_us": latency_us, "allreduces_per_token": 2 * layers,
            "bytes_per_token_per_rank": per_rank_bytes, "bandwidth_ms": bandwidth_ms,
            "latency_ms_ring": steps_ring * latency_us / 1e3, "latency_ms_tree": steps_tree * latency_us / 1e3,
            "total_ms_tree": bandwidth_ms + steps_tree * latency_us / 1e3}


def _prepare(shape_name: str, fmt: str, directory: str) -> None:
    from .. import registry, save, sparsify
    from .model_configs import SHAPES, build_model
    model = build_model(SHAPES[shape_name])
    if fmt != "dense":
        spec = registry.get(fmt)
        if spec.prune is not None:
            with torch.no_grad():
                for name, m in model.named_modules():
                    if isinstance(m, torch.nn.Linear) and name != "lm_head":
                        m.weight.copy_(spec.prune(m.weight, 0.5))
        sparsify(model, fmt, fallback=("int8", {"act": "none"}) if spec.prune is not None else None)
    save(model, directory)


def _rank(rank: int, world: int, threads: int, directory: str, prompt_len: int, new: int, reps: int,
          rendezvous: str, out: str) -> None:
    """One process of a run (world 1: plain load; world > 1: gloo + load(tp_group))."""
    import torch.distributed as dist

    from .. import load
    from ..distributed import weight_bytes
    from .decode import prompt_ids, time_generate
    torch.set_num_threads(threads)
    group = None
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
        group = dist.group.WORLD
    t0 = time.perf_counter()
    model = load(directory, tp_group=group)
    load_s = time.perf_counter() - t0
    prompt = prompt_ids(prompt_len, model.config.vocab_size)
    timing = time_generate(model, prompt, new, reps=reps, warmup=1, decoder="sparseinfer")
    result = {"rank": rank, "world": world, "threads": threads, "load_s": load_s,
              "weight_bytes": weight_bytes(model), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "tokens": timing.tokens, **timing.summary()}
    if world > 1:  # what one all-reduce of a token's activations costs here (per layer: two)
        x = torch.zeros(1, 1, model.config.hidden_size)
        samples = []
        for i in range(220):
            t = time.perf_counter()
            dist.all_reduce(x, group=group)
            if i >= 20:
                samples.append(time.perf_counter() - t)
        result["allreduce_hidden_us_median"] = sorted(samples)[len(samples) // 2] * 1e6
        result["collectives_per_token"] = 2 * model.config.num_hidden_layers + 2
    with open(f"{out}.{world}.{rank}.json", "w") as f:
        json.dump(result, f)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _run(world: int, threads: int, directory: str, args, work: str) -> list[dict]:
    import torch.multiprocessing as mp
    rendezvous = os.path.join(work, f"rendezvous{world}")
    out = os.path.join(work, "rank")
    mp.start_processes(_rank, args=(world, threads, directory, args.prompt, args.new, args.reps, rendezvous, out),
                       nprocs=world, join=True, start_method="spawn")
    results = []
    for r in range(world):
        with open(f"{out}.{world}.{r}.json") as f:
            results.append(json.load(f))
    return results


def run(args) -> dict:
    from ..runtime import build_info
    from .report import machine_info
    with tempfile.TemporaryDirectory() as work:
        directory = args.checkpoint or os.path.join(work, "model")
        if not args.checkpoint:
            t0 = time.perf_counter()
            _prepare(args.shape, args.format, directory)
            print(f"checkpoint ({args.shape}, {args.format}) written in {time.perf_counter() - t0:.1f} s", flush=True)
        single = _run(1, args.threads, directory, args, work)
        split = _run(args.world, max(1, args.threads // args.world), directory, args, work)
    base = single[0]["decode_tok_s"]["median"]
    tp = split[0]["decode_tok_s"]["median"]
    doc = {
        "benchmark": "tensor-parallel decode (gloo, one machine)", "shape": args.shape, "format": args.format,
        "prompt_tokens": args.prompt, "new_tokens": args.new, "reps": args.reps,
        "machine": {**machine_info(), "isa": build_info()["active_isa"], "cpus": os.cpu_count()},
        "single": {"processes": 1, "threads": args.threads, **single[0]},
        "tensor_parallel": {"processes": args.world, "threads_each": max(1, args.threads // args.world),
                            "backend": "gloo", "ranks": split},
        "decode_ratio_tp_over_single": tp / base,
        "collective_ms_per_token": split[0]["allreduce_hidden_us_median"] * split[0]["collectives_per_token"] / 1e3,
        "same_tokens": single[0]["tokens"] == split[0]["tokens"],
        "weight_bytes_ratio_per_rank": [r["weight_bytes"] / single[0]["weight_bytes"] for r in split],
        "allreduce_estimate_70b_8ranks_100gbps": {
            "bf16_10us": allreduce_estimate(**{k: LLAMA_70B[k] for k in ("hidden", "layers", "vocab")}),
            "bf16_2us_rdma": allreduce_estimate(**{k: LLAMA_70B[k] for k in ("hidden", "layers", "vocab")},
                                                latency_us=2.0)},
    }
    return doc


def _add_arguments(p) -> None:
    from .model_configs import SHAPES
    p.add_argument("--shape", default="tinyllama-1.1b", choices=sorted(SHAPES))
    p.add_argument("--format", default="int8", help="a registered format, or dense")
    p.add_argument("--checkpoint", help="an existing checkpoint directory (skips building one)")
    p.add_argument("--threads", type=int, default=2, help="threads of the single process (split over the ranks)")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--prompt", type=int, default=8)
    p.add_argument("--new", type=int, default=16)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", help="write the JSON here")


def add_parser(sub) -> None:
    """`sparseinfer bench-tp`."""
    _add_arguments(sub.add_parser("bench-tp", help="decode tok/s: 1 process x T threads vs W gloo "
                                                   "tensor-parallel processes x T/W threads (same checkpoint)"))


def run_from_args(args) -> int:
    doc = run(args)
    s, t = doc["single"], doc["tensor_parallel"]["ranks"][0]
    print(f"1 process x {args.threads} threads: decode {s['decode_tok_s']['median']:.2f} tok/s; "
          f"{args.world} processes x {doc['tensor_parallel']['threads_each']} thread(s): "
          f"{t['decode_tok_s']['median']:.2f} tok/s; ratio {doc['decode_ratio_tp_over_single']:.2f}; "
          f"same tokens: {doc['same_tokens']}; gloo all-reduce {t['allreduce_hidden_us_median']:.0f} us x "
          f"{t['collectives_per_token']} per token; weight bytes per rank / single: "
          + ", ".join(f"{r:.3f}" for r in doc["weight_bytes_ratio_per_rank"]))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
