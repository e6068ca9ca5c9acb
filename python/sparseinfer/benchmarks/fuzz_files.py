"""File-kind mutations for `sparseinfer fuzz-load`: a checkpoint file replaced by a symlink to a
device (/dev/zero, /dev/urandom ...), a loop or a missing target, a FIFO, a directory, a socket, a
huge sparse file; and length changes (truncated, extended with a hole, bytes appended or prepended).
Each returns a one-line description."""
from __future__ import annotations

import os
import random
import shutil
import socket

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


def checkpoint_files(directory: str) -> list[str]:
    return sorted(f for f in os.listdir(directory) if f == CONFIG or f == INDEX or f.endswith(".safetensors"))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def file_kind(rng: random.Random, directory: str, other_files: list[str]) -> str:
    """Replace one checkpoint file (or add an absent index) with another kind of file.
    `other_files`: real files of other checkpoints a symlink may point at."""
    names = checkpoint_files(directory)
    name = rng.choice(names + [INDEX] if INDEX not in names and rng.random() < 0.15 else names)
    path = os.path.join(directory, name)
    kind = rng.choice(["/dev/zero", "/dev/urandom", "/dev/null", "/dev/full", "/proc/self/mem",
                       "/proc/self/status", "/", ".", "missing", "loop", "self", "other", "fifo", "fifo",
                       "dir", "dir-with-files", "socket", "sparse", "sparse", "extend-sparse", "empty"])
    original = None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            original = f.read()
    _remove(path)
    if kind.startswith("/") or kind == ".":
        os.symlink(kind, path)
    elif kind == "missing":
        os.symlink(os.path.join(directory, "does-not-exist"), path)
    elif kind == "loop":
        os.symlink(path + ".b", path)
        os.symlink(path, path + ".b")
    elif kind == "self":
        os.symlink(name, path)
    elif kind == "other":
        target = rng.choice(other_files)
        os.symlink(target, path)
        kind = f"other checkpoint's {os.path.basename(os.path.dirname(target))}/{os.path.basename(target)}"
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "dir-with-files":
        os.mkdir(path)
        for inner in (CONFIG, "model.safetensors"):
            with open(os.path.join(path, inner), "wb") as f:
                f.write(original or b"{}")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(path)
        except OSError:  # a path too long for a socket: a FIFO stands in
            os.mkfifo(path)
            kind = "fifo (socket path too long)"
        finally:
            sock.close()
    elif kind == "sparse":
        size = rng.choice([2**31, 2**34, 2**40])
        with open(path, "wb") as f:
            f.truncate(size)
        kind = f"sparse file of {size} bytes (all zeros)"
    elif kind == "extend-sparse":
        size = rng.choice([2**31, 2**34, 2**40])
        with open(path, "wb") as f:
            f.write(original or b"")
            f.truncate(max(size, len(original or b"")))
        kind = f"the real file extended to {size} bytes with a hole"
    else:
        open(path, "wb").close()
    return f"{name} -> {kind}"


def file_length(rng: random.Random, directory: str) -> str:
    """Truncate, extend or wrap one checkpoint file (regular files only)."""
    names = [n for n in checkpoint_files(directory) if os.path.isfile(os.path.join(directory, n))]
    if not names:
        return "no regular file to change"
    name = rng.choice(names)
    path = os.path.join(directory, name)
    with open(path, "rb") as f:
        data = f.read()
    how = rng.choice(["truncate", "truncate", "append", "append-zeros", "prepend", "double"])
    if how == "truncate":
        n = rng.randrange(len(data)) if data else 0
        data, what = data[:n], f"truncated to {n} of {len(data)} bytes"
    elif how == "append":
        extra = rng.randbytes(rng.choice([1, 7, 8, 4096]))
        data, what = data + extra, f"{len(extra)} random bytes appended"
    elif how == "append-zeros":
        n = rng.choice([1, 8, 1 << 20])
        data, what = data + bytes(n), f"{n} zero bytes appended"
    elif how == "prepend":
        extra = rng.randbytes(rng.choice([1, 8]))
        data, what = extra + data, f"{len(extra)} random bytes prepended"
    else:
        data, what = data + data, "contents written twice"
    with open(path, "wb") as f:
        f.write(data)
    return f"{name} {what}"
