"""Mutations of one .safetensors file for `sparseinfer fuzz-load`: raw header bytes and the length
prefix, the parsed JSON header (dtypes, shapes, data offsets, names, __metadata__), raw tensor
bytes, and, through safetensors itself (so the file stays well-formed and the checks behind the
parser are reached), tensor values, dtypes, shapes and names. Each returns a one-line description."""
from __future__ import annotations

import json
import random
import struct
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

# --------------------------------------------------------------------------- raw file helpers


def split(data: bytes) -> tuple[int, bytes, bytes]:
    """(header length, header bytes, body) of a safetensors file as stored."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return n, data[8:8 + n], data[8 + n:]


def join(header: dict, body: bytes, text: str | None = None) -> bytes:
    """A file with this header (JSON, space-padded to 8 bytes as safetensors writes it) and body."""
    raw = (text if text is not None else json.dumps(header, separators=(",", ":"))).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _entries(header: dict) -> list[str]:
    return sorted(k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))


# --------------------------------------------------------------------------- raw bytes


def header_bytes(rng: random.Random, path: str) -> str:
    data = bytearray(_read(path))
    n, _, _ = split(bytes(data))
    end = min(8 + n, len(data))
    how = rng.choice(["flip", "flip", "digit", "insert", "delete", "quote"])
    digits = [i for i in range(8, end) if 48 <= data[i] <= 57]
    quotes = [i for i in range(8, end) if data[i] == 34]
    if how == "digit" and digits:
        i = rng.choice(digits)
        data[i] = ord(str(rng.randrange(10)))
        what = f"rewrote header digit at byte {i}"
    elif how == "insert" and end > 8:
        i = rng.randrange(8, end)
        data[i:i] = bytes([rng.choice(b'0123456789{}[]",: -.e')])
        what = f"inserted a byte into the header at {i} (length prefix unchanged)"
    elif how == "delete" and end > 8:
        i = rng.randrange(8, end)
        del data[i]
        what = f"deleted header byte {i} (length prefix unchanged)"
    elif how == "quote" and quotes:
        i = rng.choice(quotes)
        data[i] = rng.choice(b"'\\ \x00")
        what = f"replaced the quote at header byte {i}"
    else:
        spots = sorted(rng.randrange(max(1, end)) for _ in range(rng.randint(1, 4)))
        for i in spots:
            if i < len(data):
                data[i] = rng.randrange(256)
        what = f"header bytes {spots} set to random values"
    _write(path, bytes(data))
    return what


def header_length(rng: random.Random, path: str) -> str:
    data = _read(path)
    n, _, _ = split(data)
    value = rng.choice([0, 1, 2, 7, max(0, n - 1), n + 1, n + 8, len(data) - 8, len(data), len(data) + 1, 2**32,
                        2**32 + n, 100_000_000, 100_000_001, 2**62, 2**63 - 1, 2**64 - 1, rng.randrange(2**64)])
    _write(path, struct.pack("<Q", value) + data[8:])
    return f"header length prefix {n} -> {value}"


def tensor_bytes(rng: random.Random, path: str) -> str:
    data = bytearray(_read(path))
    n, header_raw, body = split(bytes(data))
    start = 8 + n
    if start >= len(data):
        return "no tensor bytes to corrupt"
    try:
        header = json.loads(header_raw)
        names = _entries(header)
    except ValueError:
        names = []
    if names and rng.random() < 0.5:  # a whole tensor's bytes to one pattern
        name = rng.choice(names)
        lo, hi = header[name]["data_offsets"]
        pattern = rng.choice([b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", None])
        fill = rng.randbytes(hi - lo) if pattern is None else pattern * (hi - lo)
        data[start + lo:start + hi] = fill
        _write(path, bytes(data))
        return f"bytes of tensor {name} set to {'random' if pattern is None else pattern.hex()}"
    spots = [rng.randrange(start, len(data)) for _ in range(rng.randint(1, 16))]
    for i in spots:
        data[i] = rng.randrange(256)
    _write(path, bytes(data))
    return f"{len(spots)} random tensor bytes"


# --------------------------------------------------------------------------- the JSON header

DTYPE_NAMES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
               "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F4", "C64", "I4", "f32", "", "F32 ", "float32"]
_BAD_VALUES = [None, 5, -1, 1.5, "x", [], {}, True, [None]]


def _shape_pool(rng: random.Random, shape: list) -> list:
    numel = 1
    for d in shape:
        numel *= d if isinstance(d, int) else 1
    consistent = [list(reversed(shape)), [numel], [1, numel], [numel, 1], shape + [1]]
    return rng.choice(consistent + [[], [0], [-1], [2**64], [2**63], [2**62, 2**62], [2**32, 2**32, 2**32],
                                    [1.5], ["1"], [[1]], None, "[2]", [1] * 64, [2**40, 0], [0, 2**40]] +
                      [[d + rng.choice([-1, 1]) for d in shape]])


def header_json(rng: random.Random, path: str) -> str:
    data = _read(path)
    _, header_raw, body = split(data)
    header = json.loads(header_raw)
    names = _entries(header)
    name = rng.choice(names)
    entry = header[name]
    how = rng.choice(["dtype", "shape", "shape", "offsets", "offsets", "drop-field", "entry", "delete", "rename",
                      "metadata", "duplicate-key", "whole", "alias"])
    text = None
    if how == "dtype":
        entry["dtype"] = rng.choice(DTYPE_NAMES + _BAD_VALUES)
        what = f"{name} dtype -> {entry['dtype']!r}"
    elif how == "shape":
        entry["shape"] = _shape_pool(rng, list(entry["shape"]))
        what = f"{name} shape -> {str(entry['shape'])[:60]}"
    elif how == "offsets":
        lo, hi = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[hi, lo], [lo, lo], [lo, hi + 1], [lo - 1, hi], [lo + 1, hi + 1],
                                            [lo, hi + 2**40], [-1, hi], [lo, len(body) * 2], [0, len(body)],
                                            [1.5, hi], [str(lo), str(hi)], [lo], [lo, hi, hi], None,
                                            [2**64, 2**64 + 4], [lo, 2**64 - 1]])
        what = f"{name} data_offsets -> {entry['data_offsets']}"
    elif how == "drop-field":
        key = rng.choice(["dtype", "shape", "data_offsets"])
        del entry[key]
        what = f"{name}: no {key}"
        if rng.random() < 0.5:
            entry["extra"] = rng.choice(_BAD_VALUES)
            what += ", an extra field"
    elif how == "entry":
        header[name] = rng.choice(_BAD_VALUES)
        what = f"{name} entry -> {header[name]!r}"
    elif how == "delete":
        del header[name]
        what = f"{name} removed from the header (its bytes stay)"
    elif how == "rename":
        new = rng.choice(["", ".", "..", "0", name + ".weight", name.replace(".", ".."), "x" * 5000,
                          "\u00e9\u4e2d", "../" + name, "__metadata__", name.upper()])
        header[new] = header.pop(name)
        what = f"{name} renamed to {new[:40]!r}"
    elif how == "metadata":
        header["__metadata__"] = rng.choice([None, [], 5, "pt", {"format": 5}, {"format": "tf"},
                                             {"k" * 1000: "v"}, {"format": "pt", "total_size": "2**64"},
                                             {"format": {"nested": [1]}}])
        what = f"__metadata__ -> {str(header['__metadata__'])[:40]}"
    elif how == "duplicate-key":
        other = rng.choice(names)
        entry_text = json.dumps(header[other], separators=(",", ":"))
        body_text = json.dumps(header, separators=(",", ":"))
        text = body_text[:-1] + f",{json.dumps(name)}:{entry_text}" + "}"
        what = f"header names {name} twice (second copy: {other}'s entry)"
    elif how == "whole":
        text = rng.choice(["[]", "null", "5", '""', "{", "{}", '{"a":1}', "[" * 10000 + "]" * 10000,
                           '{"x":' * 5000 + "1" + "}" * 5000])
        what = f"header replaced by {text[:20]!r}"
    else:  # alias: a second tensor's offsets point at this one's bytes
        other = rng.choice(names)
        header[other] = dict(header[other], data_offsets=list(entry["data_offsets"]))
        what = f"{other} aliases {name}'s bytes"
    _write(path, join(header, body, text))
    return "header: " + what


# --------------------------------------------------------------------------- well-formed files

_INT_EXTREMES = [0, 1, -1, 2, 7, 8, 127, 128, 255, 256, 2**15, 2**31 - 1, -2**31, 2**32, 2**53, 2**62,
                 2**63 - 1, -2**63]
_FLOAT_EXTREMES = [0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 1e-45,
                   65504.0, 3e38]


def _extreme(rng: random.Random, dtype: torch.dtype):
    if dtype == torch.bool:
        return rng.choice([True, False])
    if dtype.is_floating_point:
        return rng.choice(_FLOAT_EXTREMES)
    info = torch.iinfo(dtype)
    return rng.choice([v for v in _INT_EXTREMES if info.min <= v <= info.max] + [info.min, info.max])


def _random_like(rng: random.Random, t: torch.Tensor) -> torch.Tensor:
    raw = bytearray(rng.randbytes(t.numel() * t.element_size()))
    flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return flat.view(t.dtype).reshape(t.shape).clone()


def _edit_values(rng: random.Random, t: torch.Tensor) -> tuple[torch.Tensor, str]:
    t = t.clone()
    flat = t.view(-1)
    if flat.numel() == 0:
        return t, "empty tensor left alone"
    how = rng.choice(["elements", "elements", "fill", "random", "shuffle", "off-by-one", "negate", "reverse"])
    if how == "elements":
        spots = [rng.randrange(flat.numel()) for _ in range(rng.randint(1, 3))]
        values = []
        for i in spots:
            values.append(_extreme(rng, t.dtype))
            flat[i] = values[-1]
        return t, f"elements {spots} -> {values}"
    if how == "fill":
        value = _extreme(rng, t.dtype)
        flat.fill_(value)
        return t, f"filled with {value}"
    if how == "random":
        return _random_like(rng, t), "random bit patterns"
    if how == "shuffle":
        return flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
                    ].reshape(t.shape).clone(), "elements shuffled"
    if how == "off-by-one":
        i = rng.randrange(flat.numel())
        delta = rng.choice([-1, 1])
        if t.dtype == torch.bool:
            flat[i] = not bool(flat[i])
        else:
            flat[i] = flat[i] + delta
        return t, f"element {i} {delta:+d}"
    if how == "negate" and t.dtype not in (torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.uint64):
        return -t, "negated"
    return flat.flip(0).reshape(t.shape).clone(), "reversed"


_CAST_TO = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
            torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.float8_e4m3fn,
            torch.float8_e5m2, torch.complex64]


def _edit_layout(rng: random.Random, t: torch.Tensor) -> tuple[torch.Tensor, str]:
    how = rng.choice(["cast", "cast", "view", "flatten", "unsqueeze", "transpose", "scalar", "empty", "slice",
                      "slice-last", "grow", "grow-last", "repeat"])
    if how == "cast":
        dtype = rng.choice(_CAST_TO)
        return t.to(dtype), f"cast {t.dtype} -> {dtype}"
    if how == "view":
        dtype = rng.choice([d for d in _CAST_TO if d != torch.complex64])
        raw = t.contiguous().view(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        size = torch.empty(0, dtype=dtype).element_size()
        raw = raw[: raw.numel() // size * size]
        return raw.view(dtype).clone(), f"bytes reinterpreted {t.dtype} -> {dtype} (1-D)"
    if how == "flatten":
        return t.reshape(-1).clone(), f"flattened {tuple(t.shape)}"
    if how == "unsqueeze":
        return t.unsqueeze(rng.randrange(t.dim() + 1)).clone(), f"extra dim on {tuple(t.shape)}"
    if how == "transpose" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous(), f"transposed {tuple(t.shape)}"
    if how == "scalar" or t.numel() == 0:
        return (t.reshape(-1)[0].clone() if t.numel() else torch.zeros((), dtype=t.dtype)), "0-d tensor"
    if how == "empty":
        return t[:0].clone(), f"dim 0 of {tuple(t.shape)} -> 0"
    if how == "slice" and t.dim() >= 1 and t.shape[0] > 1:
        k = rng.randrange(1, t.shape[0])
        return t[:k].clone(), f"dim 0 {t.shape[0]} -> {k}"
    if how == "slice-last" and t.dim() >= 1 and t.shape[-1] > 1:
        k = rng.randrange(1, t.shape[-1])
        return t[..., :k].contiguous(), f"last dim {t.shape[-1]} -> {k}"
    if how == "grow-last" and t.dim() >= 1:
        extra = _random_like(rng, t[..., : min(t.shape[-1], rng.randint(1, 9))])
        return torch.cat([t, extra], dim=-1), f"last dim grown by {extra.shape[-1]} random values"
    if how == "repeat" and t.dim() >= 1:
        return torch.cat([t, t], dim=0), f"dim 0 doubled {tuple(t.shape)}"
    rows = max(1, min(t.shape[0] if t.dim() else 1, rng.randint(1, 9)))
    extra = _random_like(rng, t.reshape(-1, *t.shape[1:])[:rows] if t.dim() else t.reshape(1))
    return torch.cat([t.reshape(-1, *t.shape[1:]) if t.dim() else t.reshape(1), extra]), \
        f"dim 0 grown by {rows} random rows"


LEAVES = ["weight", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_packed", "weight_shape",
          "compressed", "bitmask", "row_offsets", "shape", "bias", "input_scale", "output_scale",
          "weight_global_scale"]


def _edit_keys(rng: random.Random, tensors: dict) -> str:
    names = sorted(tensors)
    name = rng.choice(names)
    prefix, _, leaf = name.rpartition(".")
    prefixes = sorted({n.rpartition(".")[0] for n in names})
    how = rng.choice(["drop", "drop", "rename-leaf", "rename-layer", "add", "add", "swap", "move-layer"])
    if how == "drop":
        del tensors[name]
        return f"dropped {name}"
    if how == "rename-leaf":
        new = f"{prefix}.{rng.choice(LEAVES)}" if prefix else rng.choice(LEAVES)
        tensors[new] = tensors.pop(name)
        return f"renamed {name} -> {new}"
    if how == "rename-layer":
        new = f"{rng.choice(prefixes + ['9', '0.0', '', 'model', '0..x'])}.{leaf}"
        tensors[new] = tensors.pop(name)
        return f"renamed {name} -> {new}"
    if how == "add":
        new = f"{rng.choice(prefixes)}.{rng.choice(LEAVES)}"
        value = tensors[rng.choice(names)].clone() if rng.random() < 0.6 else \
            torch.tensor([_extreme(rng, torch.int64)] * rng.randint(0, 3), dtype=torch.int64)
        tensors[new] = value
        return f"added {new} {tuple(value.shape)} {value.dtype}"
    if how == "swap":
        other = rng.choice(names)
        tensors[name], tensors[other] = tensors[other], tensors[name]
        return f"swapped {name} and {other}"
    src, dst = rng.choice(prefixes), rng.choice(prefixes)
    moved = [n for n in names if n.rpartition(".")[0] == src]
    for n in moved:
        tensors[f"{dst}.{n.rpartition('.')[2]}" if dst else n.rpartition(".")[2]] = tensors.pop(n)
    return f"tensors of layer {src!r} moved to {dst!r}"


def _rewrite(path: str, edit: Callable[[dict], str]) -> str:
    tensors = load_file(path)
    what = edit(tensors)
    try:
        save_file(tensors, path, metadata={"format": "pt"})
    except Exception as exc:  # e.g. a dtype safetensors cannot store: the case is the untouched file
        return f"{what} (not storable: {type(exc).__name__}; file unchanged)"
    return what


def _edit_one(rng: random.Random, edit) -> Callable[[dict], str]:
    def apply(tensors: dict) -> str:
        name = rng.choice(sorted(tensors))
        tensors[name], what = edit(rng, tensors[name])
        return f"{name}: {what}"
    return apply


def tensor_values(rng: random.Random, path: str) -> str:
    return "values " + _rewrite(path, _edit_one(rng, _edit_values))


def tensor_layout(rng: random.Random, path: str) -> str:
    return "layout " + _rewrite(path, _edit_one(rng, _edit_layout))


def tensor_keys(rng: random.Random, path: str) -> str:
    return "keys " + _rewrite(path, lambda tensors: _edit_keys(rng, tensors))
