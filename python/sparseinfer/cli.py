"""`sparseinfer` command line: bench (sparse kernels vs dense, the main job), inspect (what a
compressed checkpoint holds), quality (every compression method on small trained models), fuzz-load
(hostile checkpoints must load or raise CheckpointError) and info."""
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
    from . import registry
    from .benchmarks.linear import DEFAULT_MS, DEFAULT_SHAPES
    sparsities = _default_sparsities()
    parser = argparse.ArgumentParser(prog="sparseinfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time the kernels of every format against their baselines (same run)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="cpu (default) or cuda: GPU kernels vs cuBLAS and torch's sparse paths; "
                            "without --shapes/--sparsity/--m/--dtype it runs the GPU grid "
                            "(4096x4096, 11008x4096, 4096x11008, 8192x8192; csr 0.7/0.9; m 1..2048; fp16)")
    formats = "; ".join(f"{s.name}: {s.summary} (vs {', '.join(s.baselines)})" for s in registry.FORMATS.values())
    bench.add_argument("--format", choices=registry.names(), nargs="+", default=None,
                       help=f"weight formats to time (default: all that run on the device; {formats})")
    for name, pairs in registry.options_by_name().items():  # the formats' options, e.g. --act / --group-size
        first = pairs[0][1]
        helps = "; ".join(f"{spec.name}: {option.help} (default: "
                          f"{' and '.join(map(str, option.bench_values or (option.default,)))})" for spec, option in pairs)
        choices = None if any(o.choices is None for _, o in pairs) else tuple(
            dict.fromkeys(c for _, o in pairs for c in o.choices))
        bench.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", nargs="+", type=first.parse,
                           choices=choices, default=None, help=helps)
    bench.add_argument("--no-ort", action="store_true", help="int8: skip the ONNX Runtime baseline")
    bench.add_argument("--shapes", type=_shape, nargs="+", default=None,
                       help=f"OUTxIN weight shapes (CPU default {' '.join(f'{o}x{i}' for o, i in DEFAULT_SHAPES)})")
    bench.add_argument("--sparsity", type=_sparsity, nargs="+", default=None,
                       help=f"sparsities of the formats that take any (csr; CPU default {sparsities}); "
                            "the others keep their own (2:4: 50%%)")
    bench.add_argument("--m", type=_positive, nargs="+", default=None,
                       help=f"tokens per call, batch x sequence (CPU default {DEFAULT_MS})")
    bench.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                       help="weight/activation dtype (CPU default fp32, CUDA fp16); dense runs in the same "
                            "dtype; int8 always times fp32 activations (its baselines take fp32)")
    bench.add_argument("--threads", type=_positive, default=None,
                       help="torch.set_num_threads (default: torch's current setting)")
    bench.add_argument("--isa", default=None,
                       help="force a CPU ISA tier (reference/avx2/avx512/avx512_vnni/amx)")
    bench.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement")
    bench.add_argument("--json", metavar="PATH", help="also write results + machine info as JSON")
    bench.add_argument("--cache", choices=("both", "cold", "warm"), default="both",
                       help="CPU: rows with m <= --cold-max-m are timed cold (ours and every baseline rotate, "
                            "call by call, through copies of their weight holding >= 4x the last-level cache, "
                            "so each call streams its weight from memory, as in decode) and, with 'both' "
                            "(default), also warm (one weight reused: cache-resident when it fits, reported "
                            "as 'warm (cache)'); 'cold': cold only; 'warm': every row warm (the old figures)")
    bench.add_argument("--no-bandwidth", action="store_true",
                       help="CPU: skip measuring the read bandwidth before and after the timed cases (~2-4 s); "
                            "the roofline column (cold GB/s / read GB/s) then shows -")
    bench.add_argument("--cold-max-m", type=_positive, default=16,
                       help="CPU: largest m timed cold (default 16; larger rows are compute-bound, timed warm)")
    bench.add_argument("--llc", metavar="SIZE", default=None,
                       help="CPU: last-level cache size for the cold rotation, e.g. 32M (default: "
                            "$SPARSEINFER_LLC, else cpu0's highest cache level in sysfs, else 32M)")
    bench.add_argument("--copy-limit", metavar="SIZE", default="2G",
                       help="CPU: most memory the copies of one weight may take per side (default 2G; "
                            "rows cut short print cold*)")
    from .benchmarks import model_cli
    model_cli.add_parser(sub)
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
    from .benchmarks import conversion
    conversion.add_parser(sub)
    from .benchmarks import tp_bench
    tp_bench.add_parser(sub)
    inspect = sub.add_parser("inspect", help="per-layer format, shape, sparsity and bytes vs dense of a "
                                             "checkpoint directory (ours or compressed-tensors')")
    inspect.add_argument("directory", help="checkpoint directory (safetensors + config.json)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of the table")
    sub.add_parser("info", help="print CPU features, build and dispatch information")
    fuzz = sub.add_parser("fuzz-load", help="load thousands of mutated (hostile) checkpoints in forked workers, "
                                            "with a timeout and a memory cap per case: every one must load or "
                                            "raise CheckpointError (no crash, hang, over-allocation, other error)")
    fuzz.add_argument("--cases", type=_positive, default=10_000, help="number of cases (default 10000)")
    fuzz.add_argument("--seed", type=int, default=0, help="run seed: case i of seed S is always the same case")
    fuzz.add_argument("--only", type=int, nargs="+", default=None, metavar="I",
                      help="run only these case indices (to reproduce a failure; with --keep to look at it)")
    fuzz.add_argument("--jobs", type=int, default=0, help="cases at a time (default: one per CPU)")
    fuzz.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang")
    fuzz.add_argument("--per-worker", type=_positive, default=50,
                      help="cases a forked worker runs before a fresh fork replaces it (1: a fork per case; "
                           "a worker is always replaced after a finding)")
    fuzz.add_argument("--mem-cap-mb", type=_positive, default=1024,
                      help="heap a worker may add (RLIMIT_DATA; default 1024 MiB): a bigger allocation fails")
    fuzz.add_argument("--rss-slack-mb", type=int, default=16,
                      help="peak-RSS allowance on top of 4x the checkpoint's bytes + the seed's own cost")
    fuzz.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                      help="start no new case after this many seconds (the report says so)")
    fuzz.add_argument("--families", nargs="+", default=None, help="only these mutation families")
    fuzz.add_argument("--seeds", nargs="+", default=None, help="only these seed checkpoints")
    fuzz.add_argument("--keep", metavar="DIR", default=None,
                      help="write case directories here and keep the failing ones (with --only: all)")
    fuzz.add_argument("--json", metavar="PATH", help="also write the report + machine info as JSON")
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


def _default_sparsities() -> list[float]:
    """The bench sparsities of the formats whose sparsity is free (csr)."""
    from . import registry
    return sorted({sp for s in registry.FORMATS.values() if s.tunable_sparsity for sp in s.bench_sparsities})


def _write_json(path, document) -> None:
    """Write document() (with machine info) to path, when --json was given."""
    if path:
        with open(path, "w") as f:
            json.dump(document(), f, indent=2)
        print(f"wrote {path}")


def _bench_options(args) -> dict:
    """The registered options given on the command line, validated: name -> list of values."""
    from . import registry
    given = {}
    for spec, option in registry.options():
        values = getattr(args, f"opt_{option.name}")
        if values is not None:
            for value in values:
                option.check(value)
            given[option.name] = values
    return given


def _bench(args) -> int:
    from tqdm import tqdm

    from . import registry
    from .benchmarks import bandwidth, linear
    from .benchmarks.baselines import ort_available
    from .runtime import build_info, set_cpu_isa
    if args.device == "cuda":
        return _bench_cuda(args)
    args.format = args.format or list(registry.names())
    shapes = args.shapes or list(linear.DEFAULT_SHAPES)
    sparsities = args.sparsity or _default_sparsities()
    ms = args.m or list(linear.DEFAULT_MS)
    dtype = DTYPES[args.dtype or "fp32"]
    given = _bench_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isa:
        set_cpu_isa(args.isa)
    skip = ("ort_int8",) if args.no_ort else ()
    baselines = dict.fromkeys(b for f in args.format for b in registry.get(f).baselines if b not in skip)
    print(f"sparseinfer {build_info()['version']}: {', '.join(args.format)} vs {', '.join(baselines)}; "
          f"{dtype} (int8: float32 activations), {torch.get_num_threads()} threads, "
          f"ISA {build_info()['active_isa']}", flush=True)
    if "ort_int8" in baselines and not ort_available():
        print("(onnxruntime not installed: pip install 'sparseinfer[bench]' adds the ORT baseline)")
    streaming = _bench_streaming(args, ms)
    read_gbs = None if streaming is None or args.no_bandwidth else bandwidth.read_bandwidth_gbs
    before = read_gbs() if read_gbs else None  # the roofline of the cold rows, measured around them
    with tqdm(total=linear.grid_size(args.format, shapes, sparsities, ms, given, dtype), unit="case",
              file=sys.stderr) as bar:
        results = linear.run_grid(args.format, shapes, sparsities, ms, dtype, args.min_time, given, skip,
                                  progress=lambda r: bar.update(1), cache=args.cache,
                                  cold_max_m=args.cold_max_m, streaming=streaming)
    roofline = linear.apply_roofline(results, before, read_gbs() if read_gbs else None)
    print(linear.format_table(results))
    print("speedup = dense ms / our ms, vs X = X ms / our ms, in this run (dense: F.linear in the same dtype; torch_dynamic_int8: torch.ao "
          "quantize_dynamic; ort_int8: onnxruntime quantize_dynamic QInt8 MatMul); bytes ratio = dense "
          "weight bytes / bytes our kernel reads (the memory-bound ceiling at m=1)")
    print(linear.format_notes(results, streaming, bandwidth=roofline))
    meta = {"cache": args.cache, "cold_max_m": args.cold_max_m, **(streaming.describe() if streaming else {})}
    _write_json(args.json, lambda: linear.as_json(results, meta, roofline))
    return 0


def _bench_streaming(args, ms):
    """The cold rotation's sizing (LLC, copy limits) when some row is timed cold, else None."""
    from .benchmarks import linear
    from .benchmarks.streaming import Streaming, parse_size
    if not linear.cold_ms(ms, args.cache, args.cold_max_m):
        return None
    streaming = Streaming.detect(args.llc, max_bytes=parse_size(args.copy_limit))  # ValueError: exit 2
    print(f"cold rows (m <= {args.cold_max_m}): every side rotates through copies of its weight, >= "
          f"{streaming.factor:g} x LLC {streaming.llc_bytes / 2**20:g} MiB ({streaming.llc_source}) each", flush=True)
    return streaming


def _bench_cuda(args) -> int:
    from tqdm import tqdm

    from . import registry
    from ._native import require_cuda
    from .benchmarks import cuda as bc
    from .runtime import build_info
    require_cuda("sparseinfer bench --device cuda")
    shapes = args.shapes or list(bc.DEFAULT_SHAPES)
    sparsities = args.sparsity or list(bc.DEFAULT_SPARSITIES)
    ms = args.m or list(bc.DEFAULT_MS)
    dtype = DTYPES[args.dtype or "fp16"]
    formats = args.format or [s.name for s in registry.FORMATS.values() if "cuda" in s.devices]
    print(f"sparseinfer {build_info()['version']}: {' and '.join(formats)} vs cuBLAS F.linear "
          f"and torch sparse, {dtype}, {torch.cuda.get_device_name()}", flush=True)
    with tqdm(total=bc.grid_size(formats, shapes, sparsities, ms), unit="case", file=sys.stderr) as bar:
        results = bc.run_grid(formats, shapes, sparsities, ms, dtype, progress=lambda r: bar.update(1))
    print(bc.format_table(results))
    print("speedup = cuBLAS ms / ms in this run (GPU time, L2 flushed before every call); bytes "
          "ratio = dense weight bytes / bytes our kernel reads")
    _write_json(args.json, lambda: bc.as_json(results))
    return 0


def _info() -> int:
    from . import registry
    from .runtime import build_info, cpu_features, cuda_build_info
    print(json.dumps({"build": build_info(), "cpu_features": cpu_features(),
                      "formats": {s.name: s.summary for s in registry.FORMATS.values()},
                      "torch_threads": torch.get_num_threads(),
                      "cuda_build": cuda_build_info(),
                      "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
                     indent=2))
    return 0


def _bench_load(args) -> int:
    import tempfile

    from .benchmarks import checkpoint_load as bl
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
    params = {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
              "sparsity": args.sparsity, "dtype": args.dtype, "repeats": args.repeats,
              "threads": torch.get_num_threads()}
    _write_json(args.json, lambda: bl.results_json(results, params))
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
    _write_json(args.json, lambda: as_json(rows))
    return 0


def _inspect(args) -> int:
    from .checkpoint import inspect
    info = inspect(args.directory)
    print(json.dumps(info.to_dict(), indent=2) if args.json else info)
    return 0


def _fuzz_load(args) -> int:
    from .benchmarks import fuzz_load
    options = fuzz_load.Options(cases=args.cases, seed=args.seed, jobs=args.jobs, timeout=args.timeout,
                                per_worker=args.per_worker, mem_cap_mb=args.mem_cap_mb,
                                rss_slack_mb=args.rss_slack_mb, time_budget=args.time_budget, only=args.only,
                                families=args.families, keep=args.keep, seeds=args.seeds)
    return fuzz_load.main(options, args.json)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "bench-model":
            from .benchmarks import model_cli
            return model_cli.run(args)
        if args.command == "bench-load":
            return _bench_load(args)
        if args.command == "bench-convert":
            from .benchmarks import conversion
            return conversion.run_from_args(args)
        if args.command == "bench-tp":
            from .benchmarks import tp_bench
            return tp_bench.run_from_args(args)
        if args.command == "quality":
            return _quality(args)
        if args.command == "fuzz-load":
            return _fuzz_load(args)
        return _info()
    except (ValueError, RuntimeError) as exc:
        print(f"sparseinfer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
