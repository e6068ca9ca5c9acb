"""`sparseinfer bench-model`: end-to-end batch-1 generation of a Llama-shaped model in every
engine (plain PyTorch fp32/bf16/quantize_dynamic, every registered format, llama.cpp on a GGUF of
the same weights), all in one run: prefill and decode tokens/s, weight GB read per token, the
fraction of the bandwidth roofline (read bandwidth measured in the same run), the share of each
token spent outside Linear layers, and in-model vs standalone Linear time."""
from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .bandwidth import read_bandwidth_gbs
from .decode import linear_share, prompt_ids, standalone_linear_ms, time_generate
from .model_configs import SHAPES, build_model
from .model_engines import (Engine, format_engines, gguf_bytes_per_token, llama_cpp_engines,
                            llama_cpp_missing, torch_engines, weight_bytes_per_token)
from .report import machine_info, table


@dataclass
class EngineResult:
    engine: str
    kind: str
    details: dict
    gb_per_token: Optional[float] = None
    prefill_tok_s: Optional[dict] = None
    decode_tok_s: Optional[dict] = None
    roofline_tok_s: Optional[float] = None
    roofline_fraction: Optional[float] = None
    glue: Optional[dict] = None            # token_ms, linear_ms, glue_ms, glue_share
    standalone_linear_ms: Optional[float] = None
    in_model_over_standalone: Optional[float] = None
    convert_s: Optional[float] = None
    tokens: Optional[list[int]] = None
    skipped: Optional[str] = None


@dataclass
class ModelBenchConfig:
    shape: str = "tinyllama-1.1b"
    model_dir: Optional[str] = None  # a local HF causal-LM directory instead of a built-in shape
    prompt_tokens: int = 16
    new_tokens: int = 64
    reps: int = 3
    threads: Optional[int] = None
    engines: Optional[list[str]] = None  # substrings of engine names to keep
    formats: Optional[list[str]] = None
    sparsities: Optional[list[float]] = None
    llama_cpp: bool = True
    glue: bool = True
    seed: int = 0
    gguf_cache: Optional[str] = None
    decoder: str = "sparseinfer"  # our formats' decode loop: "sparseinfer" (generate) or "hf"


def _load_model(config: ModelBenchConfig):
    if config.model_dir is None:
        return build_model(SHAPES[config.shape], seed=config.seed), config.shape
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(config.model_dir, torch_dtype=torch.float32)
    return model.eval(), Path(config.model_dir).name


def _selected(engines: list[Engine], wanted: Optional[list[str]]) -> list[Engine]:
    if not wanted:
        return engines
    return [e for e in engines if any(w.lower() in e.name.lower() for w in wanted)]


def _decoder_for(engine: Engine, base, config: ModelBenchConfig) -> str:
    """Plain PyTorch rows decode as users run them (HF generate); sparseinfer rows with
    config.decoder where the model supports it."""
    if engine.kind != "sparseinfer" or config.decoder == "hf":
        return "hf"
    from ..generation import check_supported
    try:
        check_supported(base, config.prompt_tokens + config.new_tokens)
    except ValueError:
        return "hf"
    return "sparseinfer"


def _run_torch_like(engine: Engine, base, prompt, config: ModelBenchConfig) -> EngineResult:
    result = EngineResult(engine.name, engine.kind, dict(engine.details))
    decoder = _decoder_for(engine, base, config)
    result.details["decoder"] = decoder
    start = time.perf_counter()
    model = engine.build(base)
    result.convert_s = time.perf_counter() - start
    report = getattr(engine.build, "report", None)
    if report is not None:
        result.details["layers"] = {fmt: sum(1 for f in report.formats.values() if f == fmt)
                                    for fmt in sorted(set(report.formats.values()))}
    result.gb_per_token = weight_bytes_per_token(model) / 1e9
    timing = time_generate(model, prompt, config.new_tokens, config.reps, decoder=decoder)
    summary = timing.summary()
    result.prefill_tok_s, result.decode_tok_s, result.tokens = summary["prefill_tok_s"], summary["decode_tok_s"], timing.tokens
    if config.glue:
        result.glue = linear_share(model, prompt, min(config.new_tokens, 32), decoder=decoder)
        result.standalone_linear_ms = standalone_linear_ms(model)
        result.in_model_over_standalone = result.glue["linear_ms"] / result.standalone_linear_ms
    del model
    return result


def _run_llama_cpp(engine: Engine, base, prompt, config: ModelBenchConfig, tmp_dir: str) -> EngineResult:
    from .gguf_export import cached_gguf, default_cache_dir, write_gguf
    from .llama_cpp import time_llama_cpp
    result = EngineResult(engine.name, engine.kind, dict(engine.details))
    start = time.perf_counter()
    if config.model_dir is None:  # built-in shapes: the weights follow from (shape, seed), so cache
        cache = Path(config.gguf_cache or default_cache_dir()) / "bench-model"
        path, _ = cached_gguf(base.config, config.seed, engine.qtype, cache, make_model=lambda: base)
    else:  # a user's model: its own file every run, removed after
        path = Path(tmp_dir) / f"model-{engine.qtype}.gguf"
        write_gguf(base, path, engine.qtype)
    result.convert_s = time.perf_counter() - start
    result.details["gguf"] = str(path)
    result.gb_per_token = gguf_bytes_per_token(path) / 1e9
    out = time_llama_cpp(path, prompt[0].tolist(), config.new_tokens - 1, torch.get_num_threads(), config.reps)
    for key in ("prefill_tok_s", "decode_tok_s"):
        setattr(result, key, {k: v for k, v in out[key].items() if k != "per_rep"})
    result.tokens = out["tokens"]
    result.details["llama_cpp"] = out["llama_cpp"]
    return result


def run(config: ModelBenchConfig, progress: bool = True) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    base, model_name = _load_model(config)
    prompt = prompt_ids(config.prompt_tokens, base.config.vocab_size, config.seed)
    engines = torch_engines() + format_engines(config.formats, config.sparsities)
    missing = llama_cpp_missing() if config.llama_cpp else "disabled (--no-llama-cpp)"
    engines += llama_cpp_engines()
    engines = _selected(engines, config.engines)
    bandwidth_before = read_bandwidth_gbs()
    results = []
    tmp = tempfile.TemporaryDirectory(prefix="sparseinfer-bench-model-")
    tmp_dir = tmp.name
    bar = engines
    if progress:
        from tqdm import tqdm
        bar = tqdm(engines, desc="bench-model", unit="engine")
    for engine in bar:
        if progress:
            bar.set_postfix_str(engine.name)
        if engine.kind == "llama.cpp" and missing:
            results.append(EngineResult(engine.name, engine.kind, dict(engine.details), skipped=missing))
            continue
        if engine.kind == "llama.cpp":
            result = _run_llama_cpp(engine, base, prompt, config, tmp_dir)
        else:
            result = _run_torch_like(engine, base, prompt, config)
        results.append(result)
        gc.collect()
    tmp.cleanup()
    bandwidth_after = read_bandwidth_gbs()
    bandwidth = max(bandwidth_before, bandwidth_after)
    for r in results:
        if r.decode_tok_s and r.gb_per_token:
            r.roofline_tok_s = bandwidth / r.gb_per_token
            r.roofline_fraction = r.decode_tok_s["median"] / r.roofline_tok_s
    return {
        "benchmark": "bench-model", "model": model_name,
        "config": asdict(config), "read_bandwidth_gbs": bandwidth,
        "read_bandwidth_gbs_before_after": [bandwidth_before, bandwidth_after],
        "machine": machine_info(), "results": [asdict(r) for r in results],
    }


def _fmt(value, spec="6.2f"):
    return "-" if value is None else format(value, spec)


def format_table(doc: dict) -> str:
    rows = doc["results"]
    anchor = next((r for r in rows if r["engine"] == "llama.cpp Q8_0" and r["decode_tok_s"]), None)
    cols = [
        ("engine", 34, lambda r: r["engine"][:34]),
        ("decoder", 11, lambda r: r["details"].get("decoder", "llama.cpp")),
        ("GB/tok", 7, lambda r: _fmt(r["gb_per_token"], "7.3f")),
        ("prefill t/s", 11, lambda r: _fmt(r["prefill_tok_s"] and r["prefill_tok_s"]["median"], "11.1f")),
        ("decode t/s", 10, lambda r: _fmt(r["decode_tok_s"] and r["decode_tok_s"]["median"], "10.2f")),
        ("min-max", 13, lambda r: "-" if not r["decode_tok_s"] else
         f"{r['decode_tok_s']['min']:.1f}-{r['decode_tok_s']['max']:.1f}"),
        ("roofline", 8, lambda r: "-" if r["roofline_fraction"] is None else f"{r['roofline_fraction'] * 100:7.0f}%"),
        ("vs Q8_0", 7, lambda r: "-" if not (anchor and r["decode_tok_s"]) else
         f"{r['decode_tok_s']['median'] / anchor['decode_tok_s']['median']:6.2f}x"),
        ("glue", 5, lambda r: "-" if not r["glue"] else f"{r['glue']['glue_share'] * 100:4.0f}%"),
        ("in/alone", 8, lambda r: _fmt(r["in_model_over_standalone"], "8.2f")),
    ]
    lines = [f"{doc['model']}: batch 1, {doc['config']['prompt_tokens']}-token prompt, "
             f"{doc['config']['new_tokens']} new tokens, {doc['machine']['threads']} threads, "
             f"{doc['machine']['cpu']}, tier {doc['machine']['sparseinfer']['active_isa']}, "
             f"threading {doc['machine']['sparseinfer'].get('threading', '?')}; "
             f"read bandwidth {doc['read_bandwidth_gbs']:.1f} GB/s (peak of a native read, same run)",
             table(rows, cols)]
    for r in rows:
        if r["skipped"]:
            lines.append(f"skipped {r['engine']}: {r['skipped']}")
    lines.append("roofline = decode tok/s / (read GB/s / weight GB per token); glue = share of a decode token "
                 "outside Linear layers; in/alone = Linear time inside the model / the same layers called alone")
    return "\n".join(lines)


def plot(doc: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in doc["results"] if r["decode_tok_s"]]
    names = [r["engine"] for r in rows]
    tok_s = [r["decode_tok_s"]["median"] for r in rows]
    roof = [r["roofline_tok_s"] or 0 for r in rows]
    colors = {"torch": "tab:gray", "sparseinfer": "tab:blue", "llama.cpp": "tab:orange"}
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(y, roof, color="none", edgecolor="lightgray", hatch="//", label="bandwidth roofline")
    ax.barh(y, tok_s, color=[colors.get(r["kind"], "tab:green") for r in rows], label="decode tok/s")
    for i, r in enumerate(rows):
        ax.errorbar(tok_s[i], i, xerr=[[tok_s[i] - r["decode_tok_s"]["min"]], [r["decode_tok_s"]["max"] - tok_s[i]]],
                    color="black", capsize=2, lw=0.8)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s (batch 1)")
    ax.set_title(f"{doc['model']} on {doc['machine']['cpu']} ({doc['machine']['threads']} threads, "
                 f"{doc['machine']['sparseinfer']['active_isa']}), {doc['read_bandwidth_gbs']:.0f} GB/s", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict, out: str) -> tuple[Path, Optional[Path]]:
    """out: a path prefix; writes <out>.json, <out>.txt and <out>.png (the plot needs matplotlib,
    the `bench` extra: without it, no PNG and None)."""
    prefix = Path(out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_name(prefix.name + ".json")
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    prefix.with_name(prefix.name + ".txt").write_text(format_table(doc) + "\n")
    png = prefix.with_name(prefix.name + ".png")
    try:
        plot(doc, png)
    except ImportError:
        return json_path, None
    return json_path, png
