"""llama.cpp (through llama-cpp-python) as the anchor baseline of the end-to-end decode benchmark:
load a GGUF file (gguf_export.write_gguf), feed token ids (never text), decode greedily at batch 1,
and time prefill and decode apart.

    python -m sparseinfer.benchmarks.llama_cpp --layers 2 --qtype Q8_0

Greedy here is argmax over the last position's logits, read with llama_get_logits_ith (no sampler
chain: no penalties, no top-k sort), ties to the lowest id as torch.argmax does.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

KV_TYPES = {"f32": 0, "f16": 1}  # ggml_type ids; llama.cpp's default KV cache is f16


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as error:
        raise ImportError("the llama.cpp baseline needs llama-cpp-python: pip install llama-cpp-python") from error
    return llama_cpp


def _ggml_build() -> dict:
    """ggml_version() / ggml_commit() of the libggml-base the bindings loaded (newer ggml only)."""
    llama_cpp = _llama_cpp()
    out = {}
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if not (lib_dir / name).exists():
            continue
        try:
            lib = ctypes.CDLL(str(lib_dir / name))
        except OSError:
            continue
        for fn in ("ggml_version", "ggml_commit"):
            if hasattr(lib, fn):
                f = getattr(lib, fn)
                f.restype, f.argtypes = ctypes.c_char_p, []
                value = f()
                out[fn.removeprefix("ggml_")] = value.decode() if value else None
        break
    return out


def llama_cpp_info() -> dict:
    """llama-cpp-python's version, the ggml version/commit it was built from (when the library
    exports them), llama_print_system_info(), and the CPU features in it that are on."""
    llama_cpp = _llama_cpp()
    info = {"llama_cpp_python": getattr(llama_cpp, "__version__", None)}
    info.update(_ggml_build())
    system = llama_cpp.llama_print_system_info()
    system = system.decode(errors="replace") if isinstance(system, bytes) else str(system)
    info["system_info"] = system.strip()
    features = []
    for part in system.replace("|", " | ").split("|"):
        key, _, value = part.partition("=")
        if value.strip() == "1":
            features.append(key.strip())
    info["cpu_features"] = features
    return info


def load_llama(gguf_path, n_threads: int = 2, n_ctx: int = 512, n_batch: int = 512,
               kv_type: Optional[str] = None, flash_attn: bool = False):
    """llama_cpp.Llama on a GGUF file, CPU only, quiet, last-position logits only. kv_type
    "f32"/"f16" sets the KV cache type (None: llama.cpp's default, f16)."""
    llama_cpp = _llama_cpp()
    kwargs = {}
    if kv_type is not None:
        kwargs["type_k"] = kwargs["type_v"] = KV_TYPES[kv_type]
    return llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                           n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=0,
                           flash_attn=flash_attn, logits_all=False, verbose=False, **kwargs)


def reset(llm) -> None:
    """Empty the KV cache (Llama.reset only rewinds n_tokens; the next eval drops the cells
    past it, but clearing here keeps a rep's first eval free of that work)."""
    llama_cpp = _llama_cpp()
    llm.reset()
    memory = llama_cpp.llama_get_memory(llm.ctx) if hasattr(llama_cpp, "llama_get_memory") else None
    if memory is not None:
        llama_cpp.llama_memory_clear(memory, True)


def last_logits(llm) -> np.ndarray:
    """The logits of the last evaluated position (a view into llama.cpp's buffer)."""
    llama_cpp = _llama_cpp()
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def greedy(llm, prompt_ids: Sequence[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy decode from a fresh cache: the prompt in one eval, then single-token evals. Returns
    (the new_tokens generated ids, a copy of the prompt's last-position logits)."""
    reset(llm)
    llm.eval(list(prompt_ids))
    logits = last_logits(llm).copy()
    out = [int(logits.argmax())]
    while len(out) < new_tokens:
        llm.eval([out[-1]])
        out.append(int(last_logits(llm).argmax()))
    return out, logits


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "per_rep": values}


def time_llama_cpp(gguf_path, prompt_ids: Sequence[int], new_tokens: int = 32, n_threads: int = 2,
                   reps: int = 3, n_ctx: Optional[int] = None, n_batch: Optional[int] = None,
                   kv_type: Optional[str] = None, flash_attn: bool = False, warmup: int = 1) -> dict:
    """Time llama.cpp on `gguf_path` at batch 1, `reps` times (after `warmup` untimed runs), each
    from an empty KV cache:
      prefill: eval(prompt) and the argmax of its last logits (the first new token);
      decode: `new_tokens` single-token evals, each followed by its argmax (so a rep makes
              new_tokens + 1 tokens; only these evals count in decode time).
    Returns prefill_tok_s (prompt tokens / prefill s) and decode_tok_s (new_tokens / decode s), each
    {median, min, max, per_rep}, with the settings, the tokens of the last rep and llama_cpp_info().
    """
    prompt = [int(t) for t in prompt_ids]
    if not prompt or new_tokens < 1:
        raise ValueError("need a non-empty prompt and new_tokens >= 1")
    n_ctx = n_ctx or len(prompt) + new_tokens + 1
    n_batch = n_batch or max(len(prompt), 32)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    load_start = time.perf_counter()
    llm = load_llama(gguf_path, n_threads, n_ctx, n_batch, kv_type, flash_attn)
    load_s = time.perf_counter() - load_start
    prefill, decode = [], []
    tokens: list[int] = []
    try:
        for rep in range(warmup + reps):
            reset(llm)
            t0 = time.perf_counter()
            llm.eval(prompt)
            tok = int(last_logits(llm).argmax())
            t1 = time.perf_counter()
            tokens = [tok]
            for _ in range(new_tokens):
                llm.eval([tok])
                tok = int(last_logits(llm).argmax())
                tokens.append(tok)
            t2 = time.perf_counter()
            if rep >= warmup:
                prefill.append(len(prompt) / (t1 - t0))
                decode.append(new_tokens / (t2 - t1))
    finally:
        llm.close()
    return {"gguf": str(gguf_path), "prompt_tokens": len(prompt), "new_tokens": new_tokens,
            "n_threads": n_threads, "n_ctx": n_ctx, "n_batch": n_batch, "reps": reps,
            "kv_type": kv_type or "f16 (default)", "flash_attn": flash_attn, "load_s": load_s,
            "prefill_tok_s": _stats(prefill), "decode_tok_s": _stats(decode),
            "decode_ms_per_token": 1e3 / statistics.median(decode), "tokens": tokens,
            # other work on the cores wrecks llama.cpp's OpenMP spin barriers (2-thread decode fell
            # 10-50x on a shared 2-core box); keep the load next to the numbers
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "llama_cpp": llama_cpp_info()}


def main(argv: Optional[list[str]] = None) -> int:
    from .gguf_export import QTYPES, cached_gguf, tinyllama_config
    parser = argparse.ArgumentParser(
        prog="python -m sparseinfer.benchmarks.llama_cpp",
        description="llama.cpp decode tok/s (batch 1, greedy) of a random-weight TinyLlama-shaped "
                    "Llama (hidden 2048, MLP 5632, 32/4 heads, vocab 32000) written to GGUF.")
    parser.add_argument("--layers", type=int, default=2, help="decoder blocks (TinyLlama has 22; default 2)")
    parser.add_argument("--qtype", nargs="+", default=["Q8_0"], choices=QTYPES,
                        help="GGUF weight type(s) of the 2-D matrices (default Q8_0)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default 32)")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per rep (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument("--reps", type=int, default=3, help="timed reps (default 3)")
    parser.add_argument("--kv-type", choices=sorted(KV_TYPES), default=None,
                        help="KV cache type (default: llama.cpp's, f16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompt")
    parser.add_argument("--cache-dir", default=None,
                        help="GGUF cache (default $SPARSEINFER_GGUF_CACHE or ~/.cache/sparseinfer/gguf)")
    parser.add_argument("--json", action="store_true", help="print the full result dicts as JSON")
    args = parser.parse_args(argv)

    config = tinyllama_config(args.layers)
    prompt = np.random.default_rng(args.seed).integers(3, config.vocab_size, args.prompt_len).tolist()
    results = []
    for qtype in args.qtype:
        path, written = cached_gguf(config, args.seed, qtype, args.cache_dir)
        result = time_llama_cpp(path, prompt, args.new_tokens, args.threads, args.reps, kv_type=args.kv_type)
        result["gguf_write"] = written
        results.append(result)
        if not args.json:
            d, p = result["decode_tok_s"], result["prefill_tok_s"]
            wrote = f"written in {written['seconds']:.1f} s" if written else "cached"
            print(f"{qtype:5s} {args.layers} layers  decode {d['median']:7.1f} tok/s "
                  f"(min {d['min']:.1f}, max {d['max']:.1f})  prefill {p['median']:7.1f} tok/s  "
                  f"[{Path(path).stat().st_size / 2**20:.0f} MiB, {wrote}; load avg "
                  f"{result['loadavg_before'][0] if result['loadavg_before'] else float('nan'):.1f}]")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        info = results[0]["llama_cpp"] if results else llama_cpp_info()
        print(f"llama-cpp-python {info['llama_cpp_python']}, ggml {info.get('version')} "
              f"({info.get('commit')}), {args.threads} threads; {info['system_info']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
