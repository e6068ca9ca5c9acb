"""`sparseinfer` command line: bench (sparse kernels vs dense, the main job), inspect (what a
compressed checkpoint holds), quality (every compression method on small trained models) and info."""
from __future__ import annotations

import argparse
import json
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _shape(text: str) -> tuple[int, int]:
    try:
        out_f, in_f = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 4096x4096, got {text!r}")
    if out_f <= 0 or in_f <= 0:
        raise argparse.ArgumentTypeError(f"shape must be positive, got {text!r}")
    return out_f, in_f


def _sparsity(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .benchmarking import DEFAULT_MS, DEFAULT_SHAPES, DEFAULT_SPARSITIES, FORMATS
    from .benchmarking_int8 import ACTS
    parser = argparse.ArgumentParser(prog="sparseinfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time the sparse kernels against dense F.linear (same run)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="cpu (default) or cuda: GPU kernels vs cuBLAS and torch's sparse paths; "
                            "without --shapes/--sparsity/--m/--dtype it runs the GPU grid "
                            "(4096x4096, 11008x4096, 4096x11008, 8192x8192; csr 0.7/0.9; m 1..2048; fp16)")
    bench.add_argument("--format", choices=FORMATS + ("int8",), nargs="+", default=list(FORMATS) + ["int8"],
                       help="weight formats to time (csr: unstructured; 2:4: semi-structured; int8: "
                            "W8A8 and weight-only, also against torch dynamic int8 and ONNX Runtime, CPU only)")
    bench.add_argument("--act", choices=ACTS, nargs="+", default=list(ACTS),
                       help="int8 activation modes: dynamic (W8A8) and/or none (weight-only)")
    bench.add_argument("--group-size", type=_positive, default=None,
                       help="int8 per-group scales over this many input columns (default per channel)")
    bench.add_argument("--no-ort", action="store_true", help="int8: skip the ONNX Runtime baseline")
    bench.add_argument("--shapes", type=_shape, nargs="+", default=None,
                       help=f"OUTxIN weight shapes (CPU default {' '.join(f'{o}x{i}' for o, i in DEFAULT_SHAPES)})")
    bench.add_argument("--sparsity", type=_sparsity, nargs="+", default=None,
                       help=f"csr sparsities (CPU default {DEFAULT_SPARSITIES}; 2:4 is 50%% by construction)")
    bench.add_argument("--m", type=_positive, nargs="+", default=None,
                       help=f"tokens per call, batch x sequence (CPU default {DEFAULT_MS})")
    bench.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                       help="weight/activation dtype (CPU default fp32, CUDA fp16); dense runs in the same dtype")
    bench.add_argument("--threads", type=_positive, default=None,
                       help="torch.set_num_threads (default: torch's current setting)")
    bench.add_argument("--isa", default=None,
                       help="force a CPU ISA tier (reference/avx2/avx512/avx512_vnni/amx)")
    bench.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement")
    bench.add_argument("--json", metavar="PATH", help="also write results + machine info as JSON")
    load = sub.add_parser("bench-load", help="time sparseinfer.load of Llama-7B-shaped decoder layers (dense, "
                                             "90%% sparse, int8) against safetensors load_file (same run)")
    load.add_argument("--layers", type=_positive, default=2, help="decoder layers (default 2)")
    load.add_argument("--hidden", type=_positive, default=4096, help="hidden size (default 4096, Llama-7B)")
    load.add_argument("--intermediate", type=_positive, default=11008, help="MLP size (default 11008, Llama-7B)")
    load.add_argument("--sparsity", type=_sparsity, default=0.9, help="unstructured sparsity (default 0.9)")
    load.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weight dtype (default bf16)")
    load.add_argument("--repeats", type=_positive, default=3, help="timed loads per case; median reported")
    load.add_argument("--threads", type=_positive, default=None, help="torch.set_num_threads")
    load.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary directory)")
    load.add_argument("--json", metavar="PATH", help="also write results + machine info as JSON")
    inspect = sub.add_parser("inspect", help="per-layer format, shape, sparsity and bytes vs dense of a "
                                             "checkpoint directory (ours or compressed-tensors')")
    inspect.add_argument("directory", help="checkpoint directory (safetensors + config.json)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of the table")
    sub.add_parser("info", help="print CPU features, build and dispatch information")
    quality = sub.add_parser("quality", help="train small models on real data (digits MLP/CNN, a char-level "
                                             "Llama on Python's docs; cached), apply every compression method, "
                                             "print accuracy/perplexity, size and speed vs dense")
    quality.add_argument("--tasks", nargs="+", choices=("mlp", "cnn", "lm"), default=["mlp", "cnn", "lm"],
                         help="which models (default all three)")
    quality.add_argument("--methods", nargs="+", default=None,
                         help="only these table rows (method names as printed; dense always runs)")
    quality.add_argument("--fast", action="store_true", help="smaller models and shorter finetunes (minutes)")
    quality.add_argument("--no-cache", action="store_true",
                         help="retrain the dense models (cached under $SPARSEINFER_CACHE or ~/.cache/sparseinfer)")
    quality.add_argument("--threads", type=_positive, default=None, help="torch.set_num_threads")
    quality.add_argument("--json", metavar="PATH", help="also write the rows, targets and machine info as JSON")
    return parser


def _bench(args) -> int:
    from tqdm import tqdm

    import sparseinfer
    if args.device == "cuda":
        return _bench_cuda(args)
    from .benchmarking import (DEFAULT_MS, DEFAULT_SHAPES, DEFAULT_SPARSITIES, format_table,
                               grid_size, results_json, run_grid)
    args.shapes = args.shapes or list(DEFAULT_SHAPES)
    args.sparsity = args.sparsity or list(DEFAULT_SPARSITIES)
    args.m = args.m or list(DEFAULT_MS)
    args.dtype = args.dtype or "fp32"

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isa:
        sparseinfer.set_cpu_isa(args.isa)
    if args.group_size is not None:
        from .formats.int8 import check_group_size
        check_group_size(args.group_size)
    sparse_formats = [f for f in args.format if f != "int8"]
    report = {}
    if sparse_formats:
        total = grid_size(sparse_formats, args.shapes, args.sparsity, args.m)
        print(f"sparseinfer {sparseinfer.__version__}: {' and '.join(sparse_formats)} vs dense F.linear, "
              f"{DTYPES[args.dtype]}, {torch.get_num_threads()} threads, "
              f"ISA {sparseinfer.build_info()['active_isa']}", flush=True)
        with tqdm(total=total, unit="case", file=sys.stderr) as bar:
            results = run_grid(sparse_formats, args.shapes, args.sparsity, args.m, DTYPES[args.dtype],
                               args.min_time, progress=lambda r: bar.update(1))
        print(format_table(results))
        print("speedup = dense ms / sparse ms in this run; bytes ratio = dense weight bytes / bytes "
              "the sparse kernel reads (the memory-bound ceiling at m=1)")
        report = results_json(results)
    if "int8" in args.format:
        int8 = _bench_int8(args)
        report["int8_results"] = int8["results"]
        report.setdefault("machine", int8["machine"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _bench_int8(args) -> dict:
    from tqdm import tqdm

    import sparseinfer
    from . import benchmarking_int8 as bi
    with_ort = not args.no_ort and bi.ort_available()
    if args.dtype != "fp32":
        print(f"int8: activations are fp32 here (--dtype {args.dtype} applies to csr/2:4)")
    print(f"\nsparseinfer {sparseinfer.__version__}: int8 ({', '.join(args.act)}) vs dense fp32 F.linear, "
          f"torch dynamic int8{' and ONNX Runtime int8' if with_ort else ''}, "
          f"{torch.get_num_threads()} threads, ISA {sparseinfer.build_info()['active_isa']}", flush=True)
    if not with_ort and not args.no_ort:
        print("(onnxruntime not installed: pip install 'sparseinfer[bench]' adds the ORT baseline)")
    with tqdm(total=bi.grid_size(args.shapes, args.m, args.act), unit="case", file=sys.stderr) as bar:
        results = bi.run_grid(args.shapes, args.m, args.act, args.group_size, args.min_time, with_ort,
                              progress=lambda r: bar.update(1))
    print(bi.format_table(results))
    print("vs X = X ms / int8 ms in this run; ORT = onnxruntime quantize_dynamic (QInt8 weights, "
          "per tensor) MatMul; bytes ratio = fp32 weight bytes / int8 bytes read")
    return bi.results_json(results)


def _bench_cuda(args) -> int:
    from tqdm import tqdm

    import sparseinfer
    from . import benchmarking_cuda as bc
    from ._native import require_cuda
    require_cuda("sparseinfer bench --device cuda")
    shapes = args.shapes or list(bc.DEFAULT_SHAPES)
    sparsities = args.sparsity or list(bc.DEFAULT_SPARSITIES)
    ms = args.m or list(bc.DEFAULT_MS)
    dtype = DTYPES[args.dtype or "fp16"]
    print(f"sparseinfer {sparseinfer.__version__}: {' and '.join(args.format)} vs cuBLAS F.linear "
          f"and torch sparse, {dtype}, {torch.cuda.get_device_name()}", flush=True)
    with tqdm(total=bc.grid_size(args.format, shapes, sparsities, ms), unit="case", file=sys.stderr) as bar:
        results = bc.run_grid(args.format, shapes, sparsities, ms, dtype, progress=lambda r: bar.update(1))
    print(bc.format_table(results))
    print("speedup = cuBLAS ms / ms in this run (GPU time, L2 flushed before every call); bytes "
          "ratio = dense weight bytes / bytes our kernel reads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bc.results_json(results), f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _info() -> int:
    import sparseinfer
    print(json.dumps({"build": sparseinfer.build_info(), "cpu_features": sparseinfer.cpu_features(),
                      "torch_threads": torch.get_num_threads(),
                      "cuda_build": sparseinfer.cuda_build_info(),
                      "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
                     indent=2))
    return 0


def _bench_load(args) -> int:
    import tempfile

    from . import benchmarking_checkpoint as bl
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    shape = (args.layers, args.hidden, args.intermediate)
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        step = lambda name: print(f"  {name}", file=sys.stderr)  # noqa: E731
        print(f"writing {args.layers} decoder layer(s) {args.hidden}/{args.intermediate} {args.dtype}, "
              f"dense / csr {args.sparsity} / int8 ...", file=sys.stderr)
        dirs = bl.write_checkpoints(root, *shape, args.sparsity, dtype, progress=step)
        print("timing loads ...", file=sys.stderr)
        results = bl.time_loads(dirs, *shape, dtype, repeats=args.repeats, progress=step)
    print(bl.format_table(results))
    if args.json:
        params = {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
                  "sparsity": args.sparsity, "dtype": args.dtype, "repeats": args.repeats,
                  "threads": torch.get_num_threads()}
        with open(args.json, "w") as f:
            json.dump(bl.results_json(results, params), f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _quality(args) -> int:
    from .quality.run import TASK_KEYS, as_json, check_targets, default_tasks, format_table, recipes, run_task
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = dict(zip(TASK_KEYS, default_tasks(args.fast)))
    if args.methods:
        known = {name for key in args.tasks for name in recipes(tasks[key], args.fast)}
        unknown = sorted(set(args.methods) - known)
        if unknown:
            raise ValueError(f"unknown method(s) {unknown} for {args.tasks}; available: {sorted(known)}")
    rows = []
    for key in args.tasks:
        print(f"{tasks[key].name}: training (or cache) and compressing ...", file=sys.stderr)
        rows += run_task(tasks[key], fast=args.fast, use_cache=not args.no_cache, progress=True,
                         only=set(args.methods) if args.methods else None)
    print(format_table(rows))
    for claim, met, figures in check_targets(rows):
        print(f"[{'met' if met else 'MISSED'}] {claim}: {figures}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(as_json(rows), f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _inspect(args) -> int:
    from .checkpoint import inspect
    info = inspect(args.directory)
    print(json.dumps(info.to_dict(), indent=2) if args.json else info)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "bench-load":
            return _bench_load(args)
        if args.command == "quality":
            return _quality(args)
        return _info()
    except (ValueError, RuntimeError) as exc:
        print(f"sparseinfer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
