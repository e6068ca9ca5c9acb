"""The case families of `sparseinfer fuzz-load` and how one case is made: case i of seed S draws
everything (family, seed checkpoint, what to mutate) from random.Random(f"{S}:{i}"), so any case can
be rebuilt alone (`--only i`) from the same seed checkpoints."""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from typing import Callable, Optional

from . import fuzz_configs as fc
from . import fuzz_files as ff
from . import fuzz_safetensors as fst


@dataclass(frozen=True)
class Family:
    name: str
    weight: int
    mutate: Callable                   # (rng, directory, context) -> description
    seeds: Optional[tuple[str, ...]] = None  # only these seed checkpoints (None: any)
    what: str = ""


@dataclass
class Context:
    """What a mutation may need beyond the case directory."""
    other_files: list[str]   # real files of the seed checkpoints (symlink targets)
    marker: str              # the file code-execution bait writes


def _safetensors_file(rng: random.Random, directory: str) -> str:
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors")
                   and os.path.isfile(os.path.join(directory, f)))
    return os.path.join(directory, rng.choice(files))


def _on_file(mutate):
    return lambda rng, directory, ctx: mutate(rng, _safetensors_file(rng, directory))


FAMILIES = [
    Family("header-bytes", 8, _on_file(fst.header_bytes), what="random bytes, digits, quotes of the JSON header"),
    Family("header-length", 3, _on_file(fst.header_length), what="the 8-byte header length prefix"),
    Family("header-json", 14, _on_file(fst.header_json),
           what="parsed header: dtypes, shapes, data_offsets, names, __metadata__, duplicate keys"),
    Family("tensor-bytes", 8, _on_file(fst.tensor_bytes), what="raw tensor bytes, whole tensors to one pattern"),
    Family("tensor-values", 12, _on_file(fst.tensor_values),
           what="well-formed file, values: extremes, NaN/inf, random bits, shuffled, off by one"),
    Family("tensor-layout", 12, _on_file(fst.tensor_layout),
           what="well-formed file, dtypes (casts, reinterpretation) and shapes (0-d, empty, sliced, grown)"),
    Family("tensor-keys", 8, _on_file(fst.tensor_keys),
           what="well-formed file, tensor names: dropped, renamed, added, swapped, moved between layers"),
    Family("config-values", 12, lambda rng, d, ctx: fc.config_values(rng, d),
           what="any config.json value: huge/negative/NaN numbers, strings, regexes, nesting"),
    Family("config-structure", 7, lambda rng, d, ctx: fc.config_structure(rng, d),
           what="config.json keys missing, extra, renamed, swapped, lists for objects"),
    Family("hf-config", 6, lambda rng, d, ctx: fc.hf_config(rng, d), seeds=("llama",),
           what="Hugging Face model fields: sizes, rope, dtypes, classes, attention implementations"),
    Family("shard-index", 4, lambda rng, d, ctx: fc.shard_index(rng, d), seeds=("sharded-csr",),
           what="model.safetensors.index.json: paths, names, types, 100k entries"),
    Family("code-exec", 2, lambda rng, d, ctx: fc.code_exec(rng, d, ctx.marker), seeds=("llama", "csr"),
           what="auto_map naming a .py file in the checkpoint, pickles: must never run"),
    Family("file-kind", 8, lambda rng, d, ctx: ff.file_kind(rng, d, ctx.other_files),
           what="symlinks to devices / loops / other checkpoints, FIFOs, directories, sockets, sparse files"),
    Family("file-length", 4, lambda rng, d, ctx: ff.file_length(rng, d),
           what="truncated, appended, prepended, doubled files"),
]
BY_NAME = {f.name: f for f in FAMILIES}
STACK_PROBABILITY = 0.15  # a second mutation of another family on top of the first


@dataclass
class CaseSpec:
    index: int
    seed: str          # seed checkpoint name
    families: list[str]


def plan(run_seed: int, index: int, seed_names: list[str], families: Optional[list[str]] = None) -> tuple[
        CaseSpec, random.Random]:
    """Case `index` of a run: which seed checkpoint and families; returns the rng to mutate with."""
    rng = random.Random(f"{run_seed}:{index}")
    usable = [f for f in FAMILIES if (families is None or f.name in families)
              and (f.seeds is None or any(s in seed_names for s in f.seeds))]
    family = rng.choices(usable, weights=[f.weight for f in usable])[0]
    allowed = [s for s in seed_names if family.seeds is None or s in family.seeds]
    seed = rng.choice(allowed)
    chosen = [family.name]
    if rng.random() < STACK_PROBABILITY:
        extra = [f for f in usable if f.name != family.name and (f.seeds is None or seed in f.seeds)]
        if extra:
            chosen.append(rng.choices(extra, weights=[f.weight for f in extra])[0].name)
    # A file-kind change goes last: the other mutations read the files (a FIFO would block them).
    chosen.sort(key=lambda name: name == "file-kind")
    return CaseSpec(index, seed, chosen), rng


def materialize(spec: CaseSpec, rng: random.Random, seed_dir: str, directory: str, ctx: Context) -> list[str]:
    """Copy the seed checkpoint to `directory` and apply the case's mutations; their descriptions."""
    shutil.copytree(seed_dir, directory, symlinks=True)
    done = []
    for name in spec.families:
        try:
            done.append(f"{name}: {BY_NAME[name].mutate(rng, directory, ctx)}")
        except Exception as exc:  # noqa: BLE001
            # the mutation does not apply to what an earlier one left (e.g. a file safetensors
            # itself no longer parses, no regular file remains): the case is what is left
            done.append(f"{name}: not applicable ({type(exc).__name__}: {str(exc)[:80]})")
    return done


def data_bytes(directory: str) -> int:
    """Bytes of data the checkpoint really holds: regular files at their allocated size (a sparse
    file's hole counts nothing), symlinks, devices and FIFOs nothing. The memory budget scales
    with this."""
    total = 0
    for root, dirs, files in os.walk(directory):
        for name in files + dirs:
            st = os.lstat(os.path.join(root, name))
            if not os.path.islink(os.path.join(root, name)) and os.path.isfile(os.path.join(root, name)):
                total += min(st.st_size, st.st_blocks * 512)
    return total
