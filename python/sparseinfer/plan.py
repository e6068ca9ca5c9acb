"""Per-layer format plans for ``sparsify``: which format each Linear gets.

- `parse_choices` reads what users write for ``fallback=`` / ``allow=``: a format name, a
  ``(name, options)`` pair, or a sequence of them ("dense" = keep the nn.Linear).
- `first_taker` walks the main format then its fallbacks and returns the first whose
  ``conversion_blocker`` passes.
- `AutoPlanner` (``format="auto"``) times every allowed candidate that can take a layer on that
  layer's real weight and token count m, picks the fastest and caches the decision in memory and,
  optionally, in a JSON file (data only: nothing read from it is ever executed).
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import registry
from ._native import _C

DENSE = "dense"
AUTO = "auto"

# Timing (format="auto"). At m=1 a Linear is a pure weight read: a weight that stays in the last
# level cache between calls times far faster than it runs in a model, where the other layers'
# weights evict it. So a candidate below LLC_BYTES is timed on copies of itself, called in turn,
# with enough copies that their sum exceeds LLC_BYTES (capped at MAX_COPIES): every timed call
# then reads its weight from memory, as in a real decode step. Larger weights need no copies.
# The candidates take turns (ROUNDS rounds of REPS timed calls each, after a warm pass over the
# copies) and each keeps its best round's median, so a burst of load from other processes or
# one candidate's threads still spinning when the next starts does not decide the choice.
LLC_BYTES = 64 << 20
MAX_COPIES = 16
WARMUP = 2      # untimed calls per round (at least one per copy)
ROUNDS = 3
REPS = 5        # timed calls per round
SPARSITY_STEP = 0.05  # cache keys round the sparsity to this step
CACHE_VERSION = 1
MAX_CACHE_FILE_BYTES = 16 << 20


@dataclass(frozen=True)
class Choice:
    """One format a layer may get: a registry name (or "dense") and its full, validated options."""
    name: str
    options: tuple = ()  # sorted (option, value) pairs, defaults filled in

    @property
    def opts(self) -> dict:
        return dict(self.options)

    @property
    def label(self) -> str:
        """What reports print: the name and the options that are set, e.g. "int8 (act=none)"."""
        shown = ", ".join(f"{k}={v}" for k, v in self.options if v is not None)
        return f"{self.name} ({shown})" if shown else self.name

    def blocker(self, weight: torch.Tensor, sparsity: float, min_sparsity: float) -> Optional[str]:
        """Why this format cannot take the weight, or None ("dense" takes every weight)."""
        if self.name == DENSE:
            return None
        spec = registry.get(self.name)
        if weight.device.type not in spec.devices:
            return f"not on {weight.device.type}"
        return spec.layer_cls.conversion_blocker(weight, sparsity, min_sparsity)

    def build(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
        """The layer of this format for a dense [out, in] weight (not for "dense")."""
        return registry.get(self.name).layer_cls.from_dense(weight, bias, **self.opts)


def make_choice(name: Any, options: Optional[Mapping], arg: str) -> Choice:
    """A validated Choice; ValueError naming `arg` (the sparsify argument) otherwise."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"{arg}: the options of {name!r} must be a dict, got {type(options).__name__}")
    options = dict(options or {})
    if name == DENSE:
        if options:
            raise ValueError(f"{arg}: 'dense' takes no options, got {sorted(options)}")
        return Choice(DENSE)
    if name == AUTO:
        raise ValueError(f"{arg}: 'auto' is not a format a layer can get; name formats "
                         f"({', '.join(registry.names())} or 'dense')")
    try:
        spec = registry.get(name)
        given = spec.check_options(options)
    except ValueError as exc:
        raise ValueError(f"{arg}: {exc}") from None
    full = {o.name: o.default for o in spec.options}
    full.update(given)
    return Choice(spec.name, tuple(sorted(full.items())))


def parse_choices(value: Any, arg: str) -> list[Choice]:
    """`value` as written for fallback= / allow=: None, a name, a (name, options) pair or a
    sequence of names and pairs -> the Choices in order. ValueError naming `arg` otherwise."""
    if value is None:
        return []
    if _is_pair(value) or isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{arg} must be a format name, a (name, options) pair or a sequence of them, "
                         f"got {type(value).__name__}")
    choices = []
    for item in value:
        if isinstance(item, str):
            choice = make_choice(item, None, arg)
        elif _is_pair(item):
            choice = make_choice(item[0], item[1], arg)
        else:
            raise ValueError(f"{arg}: each entry must be a format name or a (name, options dict) pair, "
                             f"got {item!r}")
        if choice in choices:
            raise ValueError(f"{arg}: {choice.label!r} is given twice")
        choices.append(choice)
    return choices


def _is_pair(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], Mapping))


def default_allow() -> list[Choice]:
    """format="auto"'s default candidates: the lossless formats (registered as exact, without a
    quantization scheme: the sparse ones) and "dense". Formats that change numerics (int8, int4,
    codebook) are candidates only when the user names them in allow=."""
    return [make_choice(s.name, None, "allow") for s in registry.FORMATS.values()
            if s.quant_scheme is None and s.exact] + [Choice(DENSE)]


def first_taker(main: Choice, fallbacks: list[Choice], weight: torch.Tensor, sparsity: float,
                min_sparsity: float) -> tuple[Optional[Choice], str]:
    """(the first of main, *fallbacks whose blocker passes, or None to stay dense; the reason)."""
    blocked = main.blocker(weight, sparsity, min_sparsity)
    if blocked is None:
        return main, ""
    if not fallbacks:
        return None, blocked
    refused = []
    for choice in fallbacks:
        why = choice.blocker(weight, sparsity, min_sparsity)
        if why is None:
            if choice.name == DENSE:
                return None, f"{main.label}: {blocked} -> dense (fallback)"
            return choice, f"{main.label}: {blocked} -> fallback {choice.label}"
        refused.append(f"{choice.label}: {why}")
    return None, f"{main.label}: {blocked}; no fallback takes it ({'; '.join(refused)})"


def tied_names(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has in `model`, for parameters held under several names
    (tied weights, e.g. a Hugging Face lm_head.weight that is model.embed_tokens.weight)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {k: v for k, v in names.items() if len(v) > 1}


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms"


def _prepare(choice: Choice, weight: torch.Tensor) -> tuple[Callable, list]:
    """(call(copy, x), the copies to call in turn) for one candidate on `weight`."""
    if choice.name == DENSE:
        first = weight.detach().contiguous()
        nbytes, clone = first.numel() * first.element_size(), torch.clone
        call = lambda w, x: torch.nn.functional.linear(x, w)  # noqa: E731
    else:
        first = choice.build(weight, None)
        nbytes, clone = first.weight.nbytes(), copy.deepcopy
        call = lambda layer, x: layer(x)  # noqa: E731
    count = max(1, min(MAX_COPIES, math.ceil(LLC_BYTES / max(1, nbytes))))
    return call, [first] + [clone(first) for _ in range(count - 1)]


def measure(choices: list[Choice], weight: torch.Tensor, m: int) -> tuple[dict[str, float], list[str]]:
    """({label: median ms of one call}, [why a candidate could not run]) for each choice's layer
    (F.linear for "dense") on `weight` with an [m, in] activation in the weight's dtype (see
    LLC_BYTES and ROUNDS above)."""
    x = torch.randn(m, weight.shape[1], dtype=weight.dtype, device=weight.device)
    benches, failed = {}, []
    best: dict[str, float] = {}
    with torch.inference_mode():
        for choice in choices:
            try:
                call, copies = _prepare(choice, weight)
                call(copies[0], x)
            except (ValueError, RuntimeError, TypeError) as exc:  # a kernel refusing this dtype/shape
                failed.append(f"{choice.label}: {exc}")
                continue
            benches[choice.label] = (call, copies)
            best[choice.label] = math.inf
        for _ in range(ROUNDS):
            for label, (call, copies) in benches.items():
                n = len(copies)
                for i in range(max(WARMUP, n)):
                    call(copies[i % n], x)
                times = []
                for i in range(REPS):
                    t0 = time.perf_counter()
                    call(copies[i % n], x)
                    times.append(time.perf_counter() - t0)
                best[label] = min(best[label], statistics.median(times) * 1e3)
    return best, failed


class AutoPlanner:
    """format="auto": per layer, the fastest of the allowed candidates that can take it."""

    _memory: dict[str, dict] = {}  # shared by every planner in this process

    def __init__(self, allow: Any = None, m: Optional[int] = None, cache: Any = None):
        self.allow = default_allow() if allow is None else parse_choices(allow, "allow")
        if not self.allow:
            raise ValueError("allow must name at least one candidate format")
        m = 1 if m is None else m
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be a positive int (tokens per call to time), got {m!r}")
        self.m = m
        if cache is not None and not isinstance(cache, (str, os.PathLike)):
            raise ValueError(f"cache must be a file path or None, got {type(cache).__name__}")
        self.cache_path = None if cache is None else os.fspath(cache)
        self._new = 0  # decisions the cache file lacks (1 also when it must be rewritten)
        self._file: dict[str, dict] = self._read_file() if self.cache_path else {}

    # ------------------------------------------------------------------ decisions
    def choose(self, weight: torch.Tensor, sparsity: float, min_sparsity: float
               ) -> tuple[Choice, str, dict[str, float]]:
        """(the choice, the report's reason, {candidate label: ms} or {} when nothing was timed)."""
        eligible, refused = [], []
        for choice in self.allow:
            why = choice.blocker(weight, sparsity, min_sparsity)
            if why is None:
                eligible.append(choice)
            else:
                refused.append(f"{choice.label} ({why.split(': ')[0]})")  # its headline only
        tail = f"; n/a: {', '.join(refused)}" if refused else ""
        if not eligible:
            return Choice(DENSE), f"auto: no allowed format takes it{tail}", {}
        if len(eligible) == 1:
            return eligible[0], f"auto: {eligible[0].label} (the only candidate){tail}", {}
        key = self.key(weight, sparsity, eligible)
        by_label = {c.label: c for c in eligible}
        entry, cached = self._lookup(key, by_label), True
        if entry is None:
            entry, cached = self._time(weight, eligible), False
            AutoPlanner._memory[key] = entry
        if self.cache_path and self._file.get(key) is not entry:
            self._file[key] = entry
            self._new += 1
        times = entry["times_ms"]
        listed = ", ".join(f"{label} {_fmt_ms(times[label])}" for label in sorted(times, key=times.get))
        note = " (cached)" if cached else ""
        if entry.get("failed"):
            tail = f"; failed: {'; '.join(entry['failed'])}{tail}"
        return by_label[entry["choice"]], f"auto: {listed}{note}{tail}", dict(times)

    def _time(self, weight, eligible) -> dict:
        times, failed = measure(eligible, weight, self.m)
        if not times:
            raise RuntimeError("format='auto': no candidate ran on this layer: " + "; ".join(failed))
        best = min(times, key=times.get)  # ties: the earlier candidate in allow
        return {"choice": best, "times_ms": times, "failed": failed}

    def key(self, weight: torch.Tensor, sparsity: float, eligible: list[Choice]) -> str:
        """What decides the timing: the candidates that can take the layer, its shape, dtype,
        rounded sparsity and 2:4-ness, m, the build and CPU kernel tier, and the thread count."""
        return json.dumps({
            "candidates": [c.label for c in eligible],
            "shape": list(weight.shape), "dtype": str(weight.dtype).replace("torch.", ""),
            "device": weight.device.type,
            "sparsity": round(round(sparsity / SPARSITY_STEP) * SPARSITY_STEP, 4),
            "is_2_4": any(c.name == "2:4" for c in eligible),
            "m": self.m, "version": _C.build_info()["version"], "isa": _C.active_isa(),
            "threads": torch.get_num_threads(), "threading": _threading(),
        }, sort_keys=True)

    def _lookup(self, key: str, by_label: dict) -> Optional[dict]:
        for store in (AutoPlanner._memory, self._file):
            entry = store.get(key)
            if _valid_entry(entry, by_label):
                AutoPlanner._memory[key] = entry
                return entry
        return None

    @classmethod
    def clear_memory(cls) -> None:
        """Forget this process's decisions (the cache file, if any, is kept)."""
        cls._memory.clear()

    # ------------------------------------------------------------------ the cache file
    def _read_file(self) -> dict[str, dict]:
        path = self.cache_path
        if not os.path.exists(path):
            return {}
        try:
            if os.path.getsize(path) > MAX_CACHE_FILE_BYTES:
                raise ValueError(f"larger than {MAX_CACHE_FILE_BYTES} bytes")
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
                raise ValueError(f"not a version {CACHE_VERSION} sparseinfer auto-tuning cache")
            entries = data.get("entries")
            if not isinstance(entries, dict):
                raise ValueError("no 'entries' object")
        except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError too
            warnings.warn(f"ignoring the auto-tuning cache {path} ({exc}); the layers are timed "
                          "again and the file rewritten", stacklevel=4)
            self._new = 1  # rewrite it even if nothing new is timed
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(v)}

    def save(self) -> None:
        """Write the cache file (atomically) if this planner timed anything new."""
        if not self.cache_path or not self._new:
            return
        directory = os.path.dirname(os.path.abspath(self.cache_path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".sparseinfer-plan-", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": CACHE_VERSION, "entries": self._file}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            warnings.warn(f"could not write the auto-tuning cache {self.cache_path}: {exc}", stacklevel=3)
            return
        self._new = 0


def _threading() -> Optional[str]:
    """The kernels' threading backend where the build reports one (it changes timings)."""
    backend = getattr(_C, "threading_backend", None)
    if backend is None:
        return None
    kind, _, library = str(backend()).partition(":")  # "openmp:/path/libgomp.so.1" -> its file name
    return f"{kind}:{os.path.basename(library)}" if library else kind


def _valid_entry(entry: Any, by_label: Optional[dict] = None) -> bool:
    """A cached decision is only data: a chosen label among finite timings (and, at lookup, among
    the layer's candidates); anything else is a miss."""
    if not isinstance(entry, dict) or not isinstance(entry.get("times_ms"), dict):
        return False
    times = entry["times_ms"]
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v) and v >= 0 for k, v in times.items()):
        return False
    choice = entry.get("choice")
    if not isinstance(choice, str) or choice not in times:
        return False
    failed = entry.get("failed", [])
    if not isinstance(failed, list) or not all(isinstance(f, str) for f in failed):
        return False
    return by_label is None or (choice in by_label and set(times) <= set(by_label))
