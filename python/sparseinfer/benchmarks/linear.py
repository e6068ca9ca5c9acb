"""Every registered format's op against its baselines on the CPU (`sparseinfer bench`, bench/).

For each format, shape, sparsity, option variant and token count m: our op and each of the
format's baselines (registry ``baselines``: dense F.linear in the same dtype, and for int8 torch's
dynamic int8 Linear and ONNX Runtime's dynamic int8 MatMul) are timed in the same process,
interleaved, on the same input; ratios are baseline ms / our ms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from .. import registry
from . import baselines as bl
from .report import Column, machine_info, results_json, table
from .streaming import CACHE_MODES, COLD_MAX_M, ColdSet, Streaming, build_cold_set, rotate
from .timing import interleaved_ms
from .weight_bytes import bytes_read

DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (3072, 768))
DEFAULT_MS = (1, 16, 128)
# A ratio is flagged above its bytes ceiling only beyond this factor (timing noise).
CEILING_SLACK = 1.05


@dataclass
class LinearResult:
    format: str
    options: dict            # the format's options, e.g. {"act": "dynamic", "group_size": None}
    out_features: int
    in_features: int
    m: int
    sparsity: float
    dtype: str
    path: str
    ours_ms: float           # this and dense_ms, speedup, baseline_ms, vs: the `cache` figures
    dense_ms: float
    speedup: float           # dense_ms / ours_ms, same run
    baseline_ms: dict = field(default_factory=dict)  # every baseline timed, by name
    vs: dict = field(default_factory=dict)           # baseline ms / our ms, by name
    dense_bytes: int = 0     # weight bytes dense F.linear reads
    ours_bytes: int = 0      # weight bytes our kernel reads on this path
    bytes_ratio: float = 0.0  # dense_bytes / ours_bytes: the m=1 (memory-bound) ceiling
    cache: str = "warm"      # "cold" (weights rotated beyond the LLC) or "warm" (one weight reused)
    baseline_bytes: dict = field(default_factory=dict)  # weight bytes one call of each baseline reads
    ceiling: dict = field(default_factory=dict)  # baseline bytes / ours_bytes: vs[name] if both stream their weights
    above_ceiling: list = field(default_factory=list)  # names whose vs > ceiling x CEILING_SLACK
    above_bytes_ceiling: bool = False
    gbps: dict = field(default_factory=dict)     # weight GB/s of "ours" and each baseline
    cold: Optional[dict] = None  # cold figures (+ copies per side), when timed
    warm: Optional[dict] = None  # warm (cache) figures, when timed
    roofline_fraction: Optional[float] = None  # cold rows: ours GB/s / the run's read bandwidth
    baseline_roofline_fraction: Optional[dict] = None  # cold rows: the same for each baseline that rotated copies


def options_text(options: dict) -> str:
    """Set options as text, e.g. "act=dynamic" (None values left out); "-" for none."""
    return ",".join(f"{k}={v}" for k, v in options.items() if v is not None) or "-"


def figures(times: dict, ours_bytes: int, baseline_bytes: dict, ceiling: dict) -> dict:
    """One regime's figures from its times (ms by name, "ours" and "dense" among them): ratios,
    weight GB/s and the names whose ratio is above its bytes ceiling."""
    times = dict(times)
    ours = times.pop("ours")
    vs = {n: v / ours for n, v in times.items()}
    gbps = {"ours": ours_bytes / ours / 1e6}  # bytes / ms / 1e6 = GB/s
    gbps.update({n: baseline_bytes[n] / t / 1e6 for n, t in times.items() if n in baseline_bytes})
    above = [n for n, r in vs.items() if n in ceiling and r > ceiling[n] * CEILING_SLACK]
    return {"ours_ms": ours, "dense_ms": times["dense"], "speedup": vs["dense"], "baseline_ms": times,
            "vs": vs, "gbps": gbps, "above_ceiling": above, "above_bytes_ceiling": bool(above)}


def _times(spec, ours: list, sides: dict, x: torch.Tensor, kwargs: dict, min_time: float,
           settle: dict) -> dict:
    """Interleaved ms of our op and every baseline, each rotating through its list of weights
    (every copy called once first: its first call may allocate or initialise)."""
    thunks = {name: [b.bind(x) for b in copies] for name, copies in sides.items()}
    thunks = {"dense": thunks.pop("dense"), "ours": [lambda w=w: spec.op(x, w, **kwargs) for w in ours],
              **thunks}  # turns: as before
    for copies in thunks.values():
        for thunk in copies:
            thunk()
    return interleaved_ms({name: rotate(copies) for name, copies in thunks.items()}, 3, min_time, settle)


def measure(spec: registry.WeightFormat, packed, baselines: dict[str, bl.Baseline], m: int,
            options: dict, min_time: float = 0.2, dtype: Optional[torch.dtype] = None,
            cold: Optional[ColdSet] = None, warm: bool = True) -> LinearResult:
    """Time our op and the baselines for m tokens: cold (rotating through `cold`'s copies) when
    given, warm (one weight each, the old figure) when `warm` or no cold set; the main figures
    are the cold ones when timed."""
    dtype = dtype or packed.dtype
    x = torch.randn(m, packed.cols).to(dtype)
    kwargs = spec.op_kwargs(options)
    path = spec.path(packed, m, **kwargs)
    read = bytes_read(packed, path)
    dense_bytes = packed.dense_nbytes()
    nbytes = {n: b.nbytes for n, b in baselines.items() if b.nbytes}
    ceiling = {n: v / max(1, read) for n, v in nbytes.items()}
    settle = {n: b.settle_s for n, b in baselines.items() if b.settle_s}
    runs = {}
    if cold is not None:
        sides = {n: cold.baselines.get(n, [b]) for n, b in baselines.items()}
        runs["cold"] = {**figures(_times(spec, cold.ours, sides, x, kwargs, min_time, settle), read, nbytes, ceiling),
                        **cold.describe()}
    if warm or cold is None:
        sides = {n: [b] for n, b in baselines.items()}
        runs["warm"] = figures(_times(spec, [packed], sides, x, kwargs, min_time, settle), read, nbytes, ceiling)
    main = runs.get("cold") or runs["warm"]
    return LinearResult(spec.name, dict(options), packed.rows, packed.cols, m, packed.sparsity,
                        str(dtype).replace("torch.", ""), path, main["ours_ms"], main["dense_ms"], main["speedup"],
                        main["baseline_ms"], main["vs"], dense_bytes, read, dense_bytes / max(1, read),
                        "cold" if "cold" in runs else "warm", nbytes, ceiling, main["above_ceiling"],
                        main["above_bytes_ceiling"], main["gbps"], runs.get("cold"), runs.get("warm"))


def cases(formats: Iterable[str], shapes, sparsities: Optional[Iterable[float]], dtype: torch.dtype,
          given_options: Optional[dict] = None):
    """(spec, shape, sparsity, dtype, pack options, op options list) of a grid: the packing runs
    once per weight, every op-option variant (e.g. int8 act) reuses it."""
    for name in formats:
        spec = registry.get(name)
        variants = spec.variants(given_options)
        pack_keys = [o.name for o in spec.options if o.name not in spec.op_options]
        by_pack: dict[tuple, list[dict]] = {}
        for v in variants:
            by_pack.setdefault(tuple((k, v[k]) for k in pack_keys), []).append(v)
        for out_f, in_f in shapes:
            for sp in (sparsities if spec.tunable_sparsity else spec.bench_sparsities):
                for pack, op_variants in by_pack.items():
                    yield spec, (out_f, in_f), sp, spec.bench_dtype or dtype, dict(pack), op_variants


def grid_size(formats, shapes, sparsities, ms, given_options=None, dtype=torch.float32) -> int:
    return sum(len(v) for *_, v in cases(formats, shapes, sparsities, dtype, given_options)) * len(list(ms))


def cold_ms(ms: Iterable[int], cache: str = "both", cold_max_m: int = COLD_MAX_M) -> list[int]:
    """The token counts timed cold: m <= cold_max_m unless cache is "warm"."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    return [m for m in ms if cache != "warm" and m <= cold_max_m]


def run_grid(formats: Iterable[str], shapes, sparsities: Optional[Iterable[float]], ms: Iterable[int],
             dtype=torch.float32, min_time: float = 0.2, given_options: Optional[dict] = None,
             skip_baselines: Iterable[str] = (), progress=None, cache: str = "both",
             cold_max_m: int = COLD_MAX_M, streaming: Optional[Streaming] = None) -> list[LinearResult]:
    """Every case of the grid. Rows with m <= cold_max_m are timed cold (each side rotating through
    copies of its weight, `streaming` sizes them: by default 4 x the detected LLC) unless cache is
    "warm", and also warm (cache) when cache is "both"; the other rows warm."""
    ms = list(ms)
    cold_set = set(cold_ms(ms, cache, cold_max_m))
    if cold_set and streaming is None:
        streaming = Streaming.detect()
    results = []
    for spec, (out_f, in_f), sp, dt, pack, op_variants in cases(formats, shapes, sparsities, dtype, given_options):
        dense, packed = spec.example(out_f, in_f, sp, dt, 0, **pack)
        names = [n for n in spec.baselines if n not in skip_baselines]
        built = bl.build(names, dense)
        cold = None
        if cold_set:  # copies sized by the fewest bytes a cold call reads (every copy then streams)
            read = min(bytes_read(packed, spec.path(packed, m, **spec.op_kwargs(o)))
                       for o in op_variants for m in cold_set)
            cold = build_cold_set(packed, read, built, streaming)
        for options in op_variants:
            for m in ms:
                is_cold = m in cold_set
                results.append(measure(spec, packed, built, m, options, min_time, cold=cold if is_cold else None,
                                       warm=not is_cold or cache == "both"))
                if progress is not None:
                    progress(results[-1])
        del cold, built  # free this case's copies before the next case makes its own
    return results


def apply_roofline(results: list[LinearResult], before: Optional[float], after: Optional[float]) -> dict:
    """Set every cold row's roofline fractions (GB/s / the larger of the read bandwidths measured
    before and after the timed cases; None when not measured) and return the JSON's bandwidth fields."""
    measured = [v for v in (before, after) if v]
    peak = max(measured) if measured else None
    for r in results:
        if r.cold is None or peak is None:
            r.roofline_fraction = r.baseline_roofline_fraction = None
            continue
        gbps = r.cold["gbps"]
        r.roofline_fraction = gbps["ours"] / peak
        r.baseline_roofline_fraction = {n: v / peak for n, v in gbps.items()
                                        if n != "ours" and n not in r.cold["warm_only"]}
    return {"read_bandwidth_gbs": peak, "read_bandwidth_gbs_before_after": [before, after] if measured else None}


def _roofline(r: LinearResult) -> str:
    return "-" if r.roofline_fraction is None else f"{r.roofline_fraction:.2f}"


def _best_baseline_roofline(r: LinearResult) -> str:
    """The baseline closest to the roofline, e.g. "0.91 dense"."""
    if not r.baseline_roofline_fraction:
        return "-"
    name, value = max(r.baseline_roofline_fraction.items(), key=lambda kv: kv[1])
    return f"{value:.2f} {name}"


def _ceiling_mark(r: LinearResult, name: str, figs: Optional[dict] = None) -> str:
    return "!" if name in (figs or {"above_ceiling": r.above_ceiling})["above_ceiling"] else ""


def _cache_text(r: LinearResult) -> str:
    if r.cold is None:
        return "warm"
    return "cold" if r.cold["streamed"] else "cold*"


def _baseline_ms(r: LinearResult, name: str) -> str:
    warm_only = name in (r.cold or {}).get("warm_only", ())
    return _ms(r.baseline_ms.get(name)) + ("w" if warm_only else "")


def format_table(results: list[LinearResult]) -> str:
    """One table per format: its baselines' columns next to ours; cold rows with their GB/s and,
    timed both ways, the warm (cache) figures beside them. "!" marks a ratio above its bytes ceiling."""
    out = []
    for name in dict.fromkeys(r.format for r in results):
        rows = [r for r in results if r.format == name]
        extra = [b for b in dict.fromkeys(k for r in rows for k in r.baseline_ms) if b != "dense"]
        columns: list[Column] = [
            ("format", 6, lambda r: r.format),
            ("options", max(7, *(len(options_text(r.options)) for r in rows)), lambda r: options_text(r.options)),
            ("shape (out x in)", 17, lambda r: f"{r.out_features:>8d} x {r.in_features:<6d}"),
            ("m", 4, lambda r: str(r.m)), ("sparsity", 8, lambda r: f"{r.sparsity:.2f}"),
            ("path", 12, lambda r: r.path), ("cache", 5, _cache_text), ("dense ms", 9, lambda r: f"{r.dense_ms:.3f}"),
            ("ours ms", 9, lambda r: f"{r.ours_ms:.3f}"),
            ("speedup", 8, lambda r: f"{r.speedup:.2f}x" + _ceiling_mark(r, "dense"))]
        for b in extra:
            columns += [(f"{b} ms", max(9, len(b) + 3), lambda r, b=b: _baseline_ms(r, b)),
                        (f"vs {b}", max(8, len(b) + 3), lambda r, b=b: _ratio(r.vs.get(b)) + _ceiling_mark(r, b))]
        columns += [("ours GB/s", 9, lambda r: f"{r.gbps['ours']:.1f}" if r.cold else "-"),
                    ("dense GB/s", 10, lambda r: f"{r.gbps['dense']:.1f}" if r.cold and "dense" in r.gbps else "-"),
                    ("roofline", 8, _roofline)]
        if any(r.baseline_roofline_fraction for r in rows):
            columns.append(("best base roofline", max(18, *(len(_best_baseline_roofline(r)) for r in rows)),
                            _best_baseline_roofline))
        columns.append(("bytes ratio", 11, lambda r: f"{r.bytes_ratio:.2f}x"))
        if any(r.cold and r.warm for r in rows):
            columns += [("warm (cache) ms", 15, lambda r: _ms(r.warm["ours_ms"]) if r.cold and r.warm else "-"),
                        ("warm (cache) speedup", 20, _warm_speedup)]
        out.append(table(rows, columns))
    return "\n\n".join(out)


def _warm_speedup(r: LinearResult) -> str:
    if not (r.cold and r.warm):
        return "-"
    return f"{r.warm['speedup']:.2f}x" + _ceiling_mark(r, "dense", r.warm)


def format_notes(results: list[LinearResult], streaming: Optional[Streaming] = None, limit: int = 12,
                 bandwidth: Optional[dict] = None) -> str:
    """What the cache column, the GB/s, the roofline and the "!" marks mean in this run, and which
    rows are flagged; `bandwidth`: apply_roofline's fields."""
    lines = []
    cold = [r for r in results if r.cold]
    if cold:
        s = streaming
        where = f"{s.factor:g} x LLC ({s.llc_bytes / 2**20:g} MiB, {s.llc_source})" if s else "the target"
        lines.append(f"cache: cold = ours and every baseline rotate, call by call, through copies of their weight "
                     f"holding >= {where} each, so every call streams its weight from memory (decode); "
                     "warm = one weight reused call after call (stays in cache when it fits: flatters small "
                     "weights), shown as \"warm (cache)\" beside cold rows. GB/s = weight bytes per call / time.")
        lines.append(_roofline_note(bandwidth))
    short = [r for r in cold if r.cold["short"]]
    if short:
        capped = ", ".join(sorted({n for r in short for n in r.cold["short"]}))
        limits = (f" (at most {streaming.max_copies} copies, {streaming.max_bytes / 2**30:g} GiB per side)"
                  if streaming else "")
        lines.append(f"cold* ({len(short)} rows): the copies of {capped} stay under the target{limits}, "
                     "so those sides are partly cache-warm.")
    warm_only = sorted({n for r in cold for n in r.cold["warm_only"]})
    if warm_only:
        lines.append(f"{', '.join(warm_only)}: cannot rotate copies here, timed warm even in cold rows "
                     "(ms ends in 'w'; such rows print cold*).")
    flagged = [(r, kind, figs) for r in results for kind, figs in (("cold", r.cold), ("warm", r.warm))
               if figs and figs["above_ceiling"]]
    slack = f"+{(CEILING_SLACK - 1) * 100:.0f}% for noise"
    lines.append(f"! = above the bytes ceiling (baseline weight bytes / ours, {slack}): "
                 "faster than weight bytes allow if both sides streamed them, i.e. a cache-resident weight or a "
                 f"baseline that is not bandwidth-bound at this m. {len(flagged)} flagged figure(s)"
                 + (":" if flagged else "."))
    for r, kind, figs in flagged[:limit]:
        ratios = ", ".join(f"vs {n} {figs['vs'][n]:.2f}x > {r.ceiling[n]:.2f}x" for n in figs["above_ceiling"])
        lines.append(f"  ! {r.format} {options_text(r.options)} {r.out_features}x{r.in_features} m={r.m} "
                     f"sparsity={r.sparsity:.2f} {r.path} ({kind}): {ratios}")
    if len(flagged) > limit:
        lines.append(f"  ... and {len(flagged) - limit} more (above_ceiling in the JSON)")
    return "\n".join(lines)


def _roofline_note(bandwidth: Optional[dict]) -> str:
    peak = (bandwidth or {}).get("read_bandwidth_gbs")
    if peak is None:
        return "roofline = ours GB/s / the machine's read bandwidth: not measured in this run (--no-bandwidth), '-'."
    before, after = bandwidth["read_bandwidth_gbs_before_after"]
    return (f"roofline = ours GB/s / this machine's read bandwidth, {peak:.1f} GB/s (the larger of a read measured "
            f"before ({before:.1f}) and after ({after:.1f}) the timed cases; 1.00 = weight streamed at full memory "
            "speed), and best base roofline the same for the baseline closest to it (warm-only baselines left out).")


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ratio(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def as_json(results: list[LinearResult], streaming: Optional[dict] = None, bandwidth: Optional[dict] = None) -> dict:
    """Results + machine info; `streaming` (cache mode, cold_max_m, LLC and copy limits) when given;
    `bandwidth` (apply_roofline's fields: read_bandwidth_gbs, read_bandwidth_gbs_before_after), null
    when not measured."""
    used = dict.fromkeys(k for r in results for k in r.baseline_ms)
    notes = {"cache": "ours_ms, dense_ms, speedup, baseline_ms, vs, gbps and above_ceiling are the figures of "
                      "`cache`: cold (every side rotated call by call through copies of its weight holding >= "
                      "factor x LLC) for m <= cold_max_m, else warm (one weight reused: cache-resident when it "
                      "fits); `cold` and `warm` hold each regime's figures where timed",
             "ceiling": f"ceiling[name] = baseline weight bytes / our weight bytes; above_ceiling lists the baselines "
                        f"whose vs exceeds it by more than {CEILING_SLACK:g}x (cache-resident weight, or a baseline "
                        "not bandwidth-bound at that m)",
             "roofline": "roofline_fraction (cold rows) = gbps['ours'] / read_bandwidth_gbs, the larger of a read "
                         "measured before and after the timed cases; baseline_roofline_fraction: the same for each "
                         "baseline that rotated copies; null for warm rows or when not measured (--no-bandwidth)"}
    meta = {"notes": notes, "read_bandwidth_gbs": None, "read_bandwidth_gbs_before_after": None, **(bandwidth or {})}
    if streaming is not None:
        meta["streaming"] = streaming
    return results_json(results, machine=machine_info(), baselines={n: bl.DESCRIBE[n] for n in used},
                        ratio="vs[name] = baseline ms / our ms, measured interleaved in the same run", **meta)
