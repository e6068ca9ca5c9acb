"""Cold ("streaming") timing: weights that do not stay in the cache between calls.

A benchmark that calls one op on one weight again and again measures the cache, not memory, as soon
as the weight fits in the last-level cache (LLC): a 16 MB int8 weight on a 32 MB L3 ran 28x faster
than dense fp32, beyond the 3.99x its bytes allow. Decode (small m) streams every weight from memory
once per token, so the cold timing makes every side of a comparison (ours and each baseline)
rotate, call by call, through enough distinct copies of its weight that the copies together hold
at least `factor` (4) x the LLC: when a copy comes round again it has long been evicted.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

LLC_ENV = "SPARSEINFER_LLC"      # overrides the detected LLC size, e.g. 32M
DEFAULT_LLC = 32 << 20           # when sysfs says nothing
COLD_MAX_M = 16                  # rows with m <= this are timed cold by default
CACHE_MODES = ("both", "cold", "warm")
DEFAULT_FACTOR = 4.0
DEFAULT_MAX_BYTES = 2 << 30      # per side: copies of one weight never hold more than this
DEFAULT_MAX_COPIES = 64          # per side (tiny weights would otherwise need thousands)
_SYSFS = "/sys/devices/system/cpu/cpu0/cache"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes from '33554432', '32768K', '32M', '32MiB', '2G' (binary units); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"size must look like 32M, 512K, 2G or a byte count, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def sysfs_llc(root: str = _SYSFS) -> Optional[tuple[int, int]]:
    """(level, bytes) of cpu0's highest-level data/unified cache from sysfs, or None."""
    best = None
    try:
        entries = sorted(e for e in os.listdir(root) if e.startswith("index"))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(root, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(root, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(root, entry, "size")) as f:
                size = parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and (best is None or level > best[0]):
            best = (level, size)
    return best


def llc_size(override: Optional[str | int] = None, root: str = _SYSFS) -> tuple[int, str]:
    """(bytes, where the figure came from): the override (--llc), $SPARSEINFER_LLC, sysfs, or
    the 32 MiB fallback."""
    if override is not None:
        return (override if isinstance(override, int) else parse_size(override)), "given"
    if os.environ.get(LLC_ENV):
        return parse_size(os.environ[LLC_ENV]), f"${LLC_ENV}"
    found = sysfs_llc(root)
    if found is not None:
        return found[1], f"sysfs L{found[0]}"
    return DEFAULT_LLC, "fallback"


@dataclass(frozen=True)
class Streaming:
    """How many copies of a weight make a cold rotation: enough for factor x llc_bytes, at most
    max_copies and max_bytes per side (then the rotation is partly cache-warm: `reaches` is False)."""
    llc_bytes: int
    llc_source: str = "given"
    factor: float = DEFAULT_FACTOR
    max_bytes: int = DEFAULT_MAX_BYTES
    max_copies: int = DEFAULT_MAX_COPIES

    @classmethod
    def detect(cls, llc: Optional[str | int] = None, **kwargs) -> "Streaming":
        size, source = llc_size(llc)
        return cls(size, source, **kwargs)

    @property
    def target_bytes(self) -> int:
        return int(self.factor * self.llc_bytes)

    def copies(self, nbytes: int) -> int:
        """Copies of a weight of `nbytes` to rotate through (at least 1)."""
        if nbytes <= 0:
            return 1
        wanted = math.ceil(self.target_bytes / nbytes)
        return max(1, min(wanted, self.max_copies, self.max_bytes // nbytes))

    def reaches(self, nbytes: int, copies: int) -> bool:
        return nbytes <= 0 or copies * nbytes >= self.target_bytes

    def describe(self) -> dict:
        return {"llc_bytes": self.llc_bytes, "llc_source": self.llc_source, "factor": self.factor,
                "target_bytes": self.target_bytes, "max_bytes_per_side": self.max_bytes,
                "max_copies_per_side": self.max_copies}


def weight_tensors(weight) -> list[torch.Tensor]:
    """The kernel tensors a packed weight holds (fields of its layout dataclass)."""
    p = weight.packed
    return [t for t in (getattr(p, f.name) for f in dataclasses.fields(p)) if isinstance(t, torch.Tensor)]


def clone_weight(weight):
    """A packed weight equal to `weight` whose kernel tensors live in new memory (packed once,
    copied: no re-packing). Raises if any tensor would still share storage."""
    twin = copy.deepcopy(weight)
    old = {t.untyped_storage().data_ptr() for t in weight_tensors(weight)}
    if any(t.untyped_storage().data_ptr() in old for t in weight_tensors(twin)):
        raise RuntimeError(f"clone of {type(weight).__name__} shares memory with the original")
    return twin


def rotate(thunks: Sequence[Callable[[], object]]) -> Callable[[], object]:
    """One thunk that calls the given ones in turn, one per call."""
    if len(thunks) == 1:
        return thunks[0]
    turn = itertools.cycle(thunks)
    return lambda: next(turn)()


@dataclass
class ColdSet:
    """The copies each side of one weight's comparison rotates through: ours (packed weights,
    the original first) and every baseline's (Baseline objects); `warm_only` names the baselines
    that cannot make copies (timed on their one weight even in cold rows)."""
    streaming: Streaming
    ours: list
    baselines: dict = field(default_factory=dict)   # name -> [Baseline, ...]
    nbytes: dict = field(default_factory=dict)      # name ("ours" too) -> weight bytes one call reads
    warm_only: tuple = ()

    def copies(self) -> dict[str, int]:
        return {"ours": len(self.ours), **{n: len(b) for n, b in self.baselines.items()}}

    def short(self) -> list[str]:
        """The sides whose copies hold less than factor x LLC (the copy limits cut them short)."""
        return [n for n, c in self.copies().items() if not self.streaming.reaches(self.nbytes.get(n, 0), c)]

    def describe(self) -> dict:
        """JSON: copies and bytes per side; streamed = every side reached the target."""
        copies, short = self.copies(), self.short()
        return {"copies": copies, "bytes_per_copy": dict(self.nbytes),
                "rotated_bytes": {n: c * self.nbytes.get(n, 0) for n, c in copies.items()},
                "streamed": not short and not self.warm_only, "short": short, "warm_only": list(self.warm_only)}


def build_cold_set(packed, ours_bytes: int, baselines: dict, streaming: Streaming) -> ColdSet:
    """Copies of `packed` (read `ours_bytes` per call) and of every baseline (Baseline.replicate)
    sized by `streaming`; a baseline without replicate stays warm-only."""
    n = streaming.copies(ours_bytes)
    cold = ColdSet(streaming, [packed] + [clone_weight(packed) for _ in range(n - 1)], nbytes={"ours": ours_bytes})
    warm_only = []
    for name, b in baselines.items():
        copies = [b] + ([b.replicate() for _ in range(streaming.copies(b.nbytes) - 1)]
                        if b.replicate is not None and b.nbytes > 0 else [None])
        if any(c is None for c in copies):  # it cannot make copies here
            warm_only.append(name)
            continue
        cold.baselines[name] = copies
        cold.nbytes[name] = b.nbytes
    cold.warm_only = tuple(warm_only)
    return cold
