"""safetensors files of a checkpoint directory: sharded writing with an index, and a reader that
maps every tensor name to its file and turns any parse failure into CheckpointError."""
from __future__ import annotations

import json
import os
import re
import secrets
import stat
from typing import Callable, Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
MAX_JSON_BYTES = 64 * 2**20  # config.json and the index: real ones are kilobytes
MAX_JSON_DEPTH = 64          # real configs nest a few levels
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size) -> int:
    """Bytes from an int or a string like '5GB', '200MiB'."""
    if isinstance(size, bool):
        raise ValueError(f"max_shard_size must be a size, got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(size).upper())
        if not match:
            raise ValueError(f"max_shard_size must be bytes or like '5GB' / '500MiB', got {size!r}")
        value = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_tensors(tensors: dict[str, torch.Tensor], directory: str, max_shard_bytes: int) -> list[str]:
    """Write `tensors` as model.safetensors, or as model-0000i-of-0000n.safetensors shards of at
    most `max_shard_bytes` each (a larger single tensor gets a shard of its own) plus the index.
    Shard files of an earlier save that this one does not rewrite are removed. Returns file names."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + _nbytes(t) > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += _nbytes(t)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name in os.listdir(directory):  # stale files of an earlier save would shadow this one
        if (name in (SINGLE_FILE, INDEX_FILE) or _SHARD_NAME.fullmatch(name)) and name not in names:
            os.remove(os.path.join(directory, name))
    for name, shard in zip(names, shards):
        replace_file(os.path.join(directory, name), lambda path, shard=shard: save_file(shard, path, metadata=metadata))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())},
                 "weight_map": {k: n for n, shard in zip(names, shards) for k in shard}}
        write_json(os.path.join(directory, INDEX_FILE), index)
        names.append(INDEX_FILE)
    return names


def replace_file(path: str, write: Callable[[str], None]) -> None:
    """Write `path` atomically: `write(temp)` fills a new file in the same directory, which then
    replaces `path` with os.replace. An existing `path` that is a symlink is replaced itself, never
    written through (its target, e.g. a Hugging Face cache blob, is left unchanged)."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    os.close(fd)  # created new (mode 0666 less the umask), so `write` cannot land anywhere else
    try:
        write(temp)
        umask = _umask()
        if umask is not None:  # safetensors' own writer leaves 0600: give the file the usual mode
            os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, path)
    except BaseException:
        if os.path.lexists(temp):
            os.remove(temp)
        raise


def _umask() -> Optional[int]:
    """The process umask, read without changing it (os.umask would, process-wide); None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def write_json(path: str, data: dict, **options) -> None:
    def write(temp):
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, **options)
    replace_file(path, write)


def checked_regular_file(path: str) -> int:
    """The size of `path` if it is (or links to) a regular file; CheckpointError naming it if it is
    anything else (a FIFO that would block a read, /dev/zero or /dev/urandom that never end, a
    directory, a socket) or cannot be stat'ed."""
    name = os.path.basename(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{name}: not a regular file (a checkpoint holds plain files; this is a "
                              f"{_file_kind(st.st_mode)})")
    return st.st_size


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _read_regular(path: str, max_bytes: int) -> bytes:
    """At most `max_bytes` of a regular file; never blocks (O_NONBLOCK: a FIFO swapped in after the
    check cannot hang the open) and re-checks the opened file itself."""
    name = os.path.basename(path)
    checked_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CheckpointError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{name}: not a regular file (a {_file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise CheckpointError(f"{name}: {st.st_size} bytes, more than the {max_bytes} a checkpoint's JSON may hold")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise CheckpointError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # grew while we read
        raise CheckpointError(f"{name}: more than the {max_bytes} bytes a checkpoint's JSON may hold")
    return data


def _depth(data) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def read_json(path: str, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A checkpoint's JSON object (config.json, the index): a regular file of at most `max_bytes`,
    nested at most MAX_JSON_DEPTH deep; CheckpointError naming the file otherwise."""
    name = os.path.basename(path)
    raw = _read_regular(path, max_bytes)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{name}: cannot be read as JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{name}: nested deeper than Python can parse") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{name}: must hold a JSON object, got {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{name}: nested more than {MAX_JSON_DEPTH} levels deep")
    return data


class TensorReader:
    """Read-only view of the tensors of a checkpoint directory (single file or sharded with an
    index). Headers are parsed at construction; tensor data is read on demand."""

    def __init__(self, directory: str):
        self.directory = directory
        self._handles: dict[str, object] = {}
        self._file_of: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        index_path = os.path.join(directory, INDEX_FILE)
        if os.path.lexists(index_path):
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
                raise CheckpointError(f"{INDEX_FILE}: 'weight_map' must map tensor names to file names")
            for file in sorted(set(weight_map.values())):
                if os.path.basename(file) != file or not file.endswith(".safetensors"):
                    raise CheckpointError(f"{INDEX_FILE}: {file!r} is not a .safetensors file in the directory")
                keys = set(self._open(file).keys())
                for name in (k for k, v in weight_map.items() if v == file):
                    if name not in keys:
                        raise CheckpointError(f"{INDEX_FILE}: tensor {name} is mapped to {file}, which lacks it")
                    self._file_of[name] = file
        elif os.path.lexists(os.path.join(directory, SINGLE_FILE)):
            self._file_of = {k: SINGLE_FILE for k in self._open(SINGLE_FILE).keys()}
        else:
            raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")

    def _open(self, file: str):
        if file not in self._handles:
            path = os.path.join(self.directory, file)
            if not os.path.exists(path):
                raise CheckpointError(f"{file}: not a valid safetensors file (no such file)")
            self._sizes[file] = checked_regular_file(path)  # never a FIFO, /dev/zero, ...
            try:
                self._handles[file] = safe_open(path, framework="pt")
            except Exception as exc:  # safetensors raises its own error type for every bad header
                raise CheckpointError(f"{file}: not a valid safetensors file ({exc})") from None
        return self._handles[file]

    def file_bytes(self) -> int:
        """Total size of the safetensors files the checkpoint's tensors live in."""
        return sum(self._sizes.values())

    def keys(self) -> Iterable[str]:
        return self._file_of.keys()

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def file_of(self, name: str) -> str:
        return self._file_of[name]

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name` (CPU), or CheckpointError naming it if absent or unreadable."""
        if name not in self._file_of:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint")
        file = self._file_of[name]
        try:
            return self._open(file).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"tensor {name} in {file} cannot be read ({exc})") from None

    def shape_dtype(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype string) from the header, without reading data."""
        try:
            s = self._open(self._file_of[name]).get_slice(name)
            return tuple(s.get_shape()), s.get_dtype()
        except KeyError:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint") from None
        except Exception as exc:
            raise CheckpointError(f"tensor {name} header cannot be read ({exc})") from None

    def nbytes(self, name: str) -> int:
        shape, dtype = self.shape_dtype(name)
        numel = 1
        for d in shape:
            numel *= d
        return numel * DTYPE_BYTES.get(dtype, 1)

    def optional(self, name: str) -> Optional[torch.Tensor]:
        return self.get(name) if name in self._file_of else None


DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
