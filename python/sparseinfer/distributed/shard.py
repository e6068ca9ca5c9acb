"""Sharding rules: the canonical (checkpoint) arrays of one weight -> the canonical arrays of its
rows [start, stop) (dim 0, out features) or columns [start, stop) (dim 1, in features), so each
tensor-parallel rank packs only its shard.

A rule is ``shard(arrays, dim, start, stop, **layer_options) -> dict`` (a format registers it as
``WeightFormat.shard``). `arrays` maps canonical names to CPU tensors *or* lazy arrays (anything
with ``.shape`` and basic-slice ``[...]`` returning a CPU tensor, e.g. a safetensors slice): a rule
reads only the parts of the stored arrays it needs, a block of rows at a time, so loading a shard
from a file never holds the whole weight. The data is untrusted: what a rule reads to locate the
shard (bitmask popcounts, shapes) is checked here; the shard itself is validated by the format's
``from_canonical`` when packed. Rules raise FormatError (a ValueError) naming the array, or
ValueError when the bounds do not fall on the format's boundaries.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..formats.bits import POPCOUNT8, unpack_bits
from ..formats.errors import FormatError
from ..formats.host import as_numpy

BLOCK_BYTES = 4 << 20  # rows are read and sliced in blocks of about this many bitmask/weight bytes


def _fail(fmt: str, array: str, detail: str):
    raise FormatError(f"{fmt} {array}: {detail}", array=array, detail=detail)


def _read(a, index) -> torch.Tensor:
    t = a[index]
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(t)


def _read_all(a) -> torch.Tensor:
    """The whole (small) array: a tensor as is, a lazy array read in full."""
    if isinstance(a, torch.Tensor):
        return a
    return _read(a, slice(None)) if len(tuple(a.shape)) else _read(a, ())


def _shape2(fmt: str, shape) -> tuple[int, int]:
    """(rows, cols) of a canonical ``shape`` array (tensor, lazy array or sequence)."""
    try:
        t = torch.tensor(shape) if isinstance(shape, (tuple, list)) else _read_all(shape)
        if t.dtype not in (torch.int32, torch.int64) or t.numel() != 2:
            raise ValueError
        rows, cols = (int(v) for v in t.flatten().tolist())
    except (TypeError, ValueError, RuntimeError):
        _fail(fmt, "shape", f"must hold two integers (int32/int64), got {shape!r}")
    if rows < 0 or cols < 0:
        _fail(fmt, "shape", f"must be non-negative, got {(rows, cols)}")
    return rows, cols


def _want_shape(fmt: str, name: str, a, shape: tuple) -> None:
    if tuple(a.shape) != tuple(shape):
        _fail(fmt, name, f"shape must be {tuple(shape)}, got {tuple(a.shape)}")


def check_bounds(dim: int, start: int, stop: int, rows: int, cols: int) -> None:
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (rows / out features) or 1 (columns / in features), got {dim!r}")
    size = (rows, cols)[dim]
    if not 0 <= start <= stop <= size:
        raise ValueError(f"shard [{start}, {stop}) is outside the {size} {('rows', 'columns')[dim]} of the weight")


def split_bounds(size: int, world: int, rank: int, multiple: int = 1) -> tuple[int, int]:
    """[start, stop) of `rank`'s part of `size` items cut into `world` parts of whole `multiple`s:
    equal when they divide, else ceil-sized parts and a shorter last one (possibly empty)."""
    units = -(-size // multiple)
    per = -(-units // world)
    start, stop = min(size, rank * per * multiple), min(size, (rank + 1) * per * multiple)
    return start, stop


def slice_bits(packed: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Columns [start, stop) of a little-endian row bitmask (uint8 [rows, bytes] holding at least
    `stop` columns) as a new bitmask uint8 [rows, ceil((stop - start) / 8)], re-packed."""
    b0 = start // 8
    block = as_numpy(packed[:, b0: -(-stop // 8)])
    if block.shape[-1] == 0:
        return torch.zeros(packed.shape[0], -(-(stop - start) // 8), dtype=torch.uint8)
    bits = np.unpackbits(block, axis=-1, bitorder="little")[:, start - 8 * b0: stop - 8 * b0]
    return torch.from_numpy(np.packbits(bits, axis=-1, bitorder="little"))


def _row_step(bytes_per_row: int) -> int:
    return max(1, BLOCK_BYTES // max(1, bytes_per_row))


def _bitmask_counts(fmt: str, bitmask, rows: int, cols: int) -> np.ndarray:
    """Set bits per row of a (lazy) bitmask, read a block of rows at a time; checks its dtype and
    that no bit is set beyond the last column (the counts locate every row's values)."""
    nbytes = -(-cols // 8)
    counts = np.zeros(rows, dtype=np.int64)
    step = _row_step(nbytes)
    for a in range(0, rows, step):
        block = _read(bitmask, slice(a, a + step))
        if block.dtype != torch.uint8:
            _fail(fmt, "bitmask", f"dtype must be uint8, got {block.dtype}")
        data = as_numpy(block)
        if cols % 8 and nbytes:
            beyond = data[:, -1] >> (cols % 8)
            if beyond.any():
                _fail(fmt, "bitmask", f"row {a + int(np.argmax(beyond != 0))} has bits set beyond column {cols - 1}")
        counts[a:a + data.shape[0]] = np.take(POPCOUNT8, data).sum(-1, dtype=np.int64)
    return counts


def _shape_tensor(like, rows: int, cols: int) -> torch.Tensor:
    """A canonical shape array for (rows, cols) laid out like the stored one ([2] or [2, 1])."""
    dims = tuple(like.shape) if hasattr(like, "shape") else (2,)
    return torch.tensor([rows, cols], dtype=torch.int64).reshape(dims if len(dims) and np.prod(dims) == 2 else (2,))


# ---------------------------------------------------------------------------------------- CSR
def shard_csr(arrays: dict, dim: int, start: int, stop: int, **_options) -> dict:
    """sparse-bitmask (shape, compressed [nnz] row-major, bitmask [rows, ceil(cols/8)], optional
    row_offsets): rows slice the values by row offsets; columns re-pack the bitmask bits and keep
    each row's values inside the columns (any column bounds)."""
    fmt = "CSR"
    rows, cols = _shape2(fmt, arrays["shape"])
    check_bounds(dim, start, stop, rows, cols)
    bitmask, compressed, stored_offsets = arrays["bitmask"], arrays["compressed"], arrays.get("row_offsets")
    _want_shape(fmt, "bitmask", bitmask, (rows, -(-cols // 8)))
    counts = _bitmask_counts(fmt, bitmask, rows, cols)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    nnz = int(offsets[-1])
    if tuple(compressed.shape) != (nnz,):
        _fail(fmt, "compressed", f"must be 1-D with the {nnz} values the bitmask sets, got shape "
              f"{tuple(compressed.shape)}")
    if stored_offsets is not None:
        _want_shape(fmt, "row_offsets", stored_offsets, (rows,))
        given = _read(stored_offsets, slice(None))
        if given.dtype not in (torch.int32, torch.int64):
            _fail(fmt, "row_offsets", f"dtype must be int32/int64, got {given.dtype}")
        bad = np.nonzero(as_numpy(given.to(torch.int64)) != offsets[:-1])[0]
        if bad.size:
            r = int(bad[0])
            _fail(fmt, "row_offsets", f"row_offsets[{r}] = {int(given[r])}, but the bitmask puts row {r} at "
                  f"{int(offsets[r])}")
    if dim == 0:
        lo, hi = int(offsets[start]), int(offsets[stop])
        values = _read(compressed, slice(lo, hi))
        mask = _read(bitmask, slice(start, stop))
        out_rows, out_cols = stop - start, cols
        row_nnz = counts[start:stop]
    else:
        parts_v, parts_m, row_nnz = [], [], []
        step = _row_step(cols * 2)
        for a in range(0, rows, step):
            b = min(rows, a + step)
            block = _read(bitmask, slice(a, b))
            nonzero = unpack_bits(block, cols)                           # bool [nb, cols]
            before = nonzero[:, :start].sum(-1, dtype=torch.int64).numpy()
            inside = nonzero[:, start:stop].sum(-1, dtype=torch.int64).numpy()
            lo = offsets[a:b] + before                                   # each row's values in the columns
            if isinstance(compressed, torch.Tensor) or inside.sum() * 4 >= 3 * (offsets[b] - offsets[a]):
                span = _read(compressed, slice(int(offsets[a]), int(offsets[b])))
                keep = torch.zeros(cols, dtype=torch.bool)
                keep[start:stop] = True
                parts_v.append(span[keep.expand(b - a, cols)[nonzero]])  # in memory, or most of the span
            else:                                                        # from a file: the rows' own segments
                parts_v.extend(_read(compressed, slice(int(l), int(l + n))) for l, n in zip(lo, inside) if n)
            parts_m.append(slice_bits(block, start, stop))
            row_nnz.append(inside)
        values = torch.cat(parts_v) if parts_v else _read(compressed, slice(0, 0))
        mask = torch.cat(parts_m) if parts_m else torch.zeros(0, -(-(stop - start) // 8), dtype=torch.uint8)
        row_nnz = np.concatenate(row_nnz) if row_nnz else np.zeros(0, dtype=np.int64)
        out_rows, out_cols = rows, stop - start
    out = {"shape": _shape_tensor(arrays["shape"], out_rows, out_cols), "compressed": values.contiguous(),
           "bitmask": mask.contiguous()}
    out["row_offsets"] = torch.from_numpy(np.concatenate(([0], np.cumsum(row_nnz)))[:-1].astype(np.int64))
    return out


# ---------------------------------------------------------------------------------------- 2:4
GROUP_24 = 4


def _kept_24(cols: int) -> int:
    """Stored values per row of a 2:4 weight with `cols` columns (2 per full group of 4, and
    min(2, tail) for a last partial group)."""
    return cols // GROUP_24 * 2 + min(2, cols % GROUP_24)


def shard_24(arrays: dict, dim: int, start: int, stop: int, **_options) -> dict:
    """sparse-24-bitmask (shape [2, 1], compressed [rows, kept], bitmask): rows slice both
    arrays; columns split whole groups of 4 (start and stop multiples of 4, or stop the last
    column): compressed columns [start/2, ...) and the bitmask bits re-packed."""
    fmt = "2:4"
    rows, cols = _shape2(fmt, arrays["shape"])
    check_bounds(dim, start, stop, rows, cols)
    compressed, bitmask = arrays["compressed"], arrays["bitmask"]
    _want_shape(fmt, "compressed", compressed, (rows, _kept_24(cols)))
    _want_shape(fmt, "bitmask", bitmask, (rows, -(-cols // 8)))
    if dim == 0:
        out = {"compressed": _read(compressed, slice(start, stop)), "bitmask": _read(bitmask, slice(start, stop))}
        out_shape = (stop - start, cols)
    else:
        if start % GROUP_24 or (stop % GROUP_24 and stop != cols):
            raise ValueError(f"2:4 weights split on columns only at multiples of {GROUP_24} (whole groups of "
                             f"4); columns [{start}, {stop}) of {cols} do not")
        lo = start // 2
        out = {"compressed": _read(compressed, (slice(None), slice(lo, lo + _kept_24(stop - start)))),
               "bitmask": slice_bits(_read(bitmask, (slice(None), slice(start // 8, -(-stop // 8)))),
                                     start - 8 * (start // 8), stop - 8 * (start // 8))}
        out_shape = (rows, stop - start)
    out["shape"] = _shape_tensor(arrays["shape"], *out_shape)
    return {k: v.contiguous() for k, v in out.items()}


# ------------------------------------------------------------------------------- int8 / packed
def _group_width(fmt: str, cols: int, groups: int, group_size: Optional[int]) -> Optional[int]:
    """The columns per scale group (None: per channel), from the layer's group_size when it
    matches the stored number of groups, else the smallest multiple of 32 that gives it."""
    if groups == 1:
        return None
    if group_size is not None and -(-cols // group_size) == groups:
        return group_size
    guess = -(-(-(-cols // groups)) // 32) * 32
    if -(-cols // guess) != groups:
        _fail(fmt, "weight_scale", f"{groups} groups fit no group size for {cols} columns")
    return guess


def _shard_scales(fmt: str, arrays: dict, keys: tuple, rows: int, cols: int, dim: int, start: int, stop: int,
                  group_size: Optional[int]) -> dict:
    """Per-row, per-group metadata (weight_scale, weight_zero_point, a codebook's tables): [rows],
    [rows, groups] or [rows, groups, ...], or one value per tensor; rows slice them, columns keep
    per-channel ones whole and cut grouped ones on group boundaries (ValueError otherwise)."""
    out = {}
    for key in keys:
        a = arrays[key]
        shape = tuple(a.shape)
        if int(np.prod(shape)) == 1 and rows != 1:       # one scale per tensor: every shard keeps it
            out[key] = _read_all(a)
            continue
        if not 1 <= len(shape) <= 3 or shape[0] != rows:
            _fail(fmt, key, f"shape must be ({rows},), ({rows}, groups) or ({rows}, groups, n), got {shape}")
        groups = 1 if len(shape) == 1 else shape[1]
        if dim == 0:
            out[key] = _read(a, slice(start, stop))
            continue
        width = _group_width(fmt, cols, groups, group_size)
        if width is None:
            out[key] = _read_all(a)
            continue
        if start % width or (stop % width and stop != cols):
            raise ValueError(f"{fmt} weights grouped by {width} columns split on columns only at group "
                             f"boundaries; columns [{start}, {stop}) of {cols} do not (use a world size "
                             f"that divides the groups, or per-channel scales)")
        out[key] = _read(a, (slice(None), slice(start // width, -(-stop // width))))
    return out


def _scale_keys(arrays: dict) -> tuple:
    return tuple(k for k in ("weight_scale", "weight_zero_point") if k in arrays)


def _refuse_extra(fmt: str, arrays: dict, known: set) -> None:
    extra = sorted(set(arrays) - known)
    if extra:
        raise ValueError(f"{fmt} weights with {extra} cannot be sharded (activation-order or other "
                         "per-column metadata is not supported)")


def shard_int8(arrays: dict, dim: int, start: int, stop: int, group_size: Optional[int] = None,
               num_bits: int = 8, **_options) -> dict:
    """int-quantized (weight int8 [rows, cols], weight_scale, optional weight_zero_point); stored
    as pack-quantized (weight_packed) it is cut by shard_pack_quantized."""
    if "weight_packed" in arrays:
        return shard_pack_quantized(arrays, dim, start, stop, group_size=group_size, num_bits=num_bits)
    fmt = "int8"
    _refuse_extra(fmt, arrays, {"weight", "weight_scale", "weight_zero_point"})
    q = arrays["weight"]
    if len(tuple(q.shape)) != 2:
        _fail(fmt, "weight", f"must be 2-D, got shape {tuple(q.shape)}")
    rows, cols = q.shape
    check_bounds(dim, start, stop, rows, cols)
    out = _shard_scales(fmt, arrays, _scale_keys(arrays), rows, cols, dim, start, stop, group_size)
    out["weight"] = _read(q, slice(start, stop) if dim == 0 else (slice(None), slice(start, stop)))
    return {k: v.contiguous() for k, v in out.items()}


def shard_pack_quantized(arrays: dict, dim: int, start: int, stop: int, group_size: Optional[int] = None,
                         num_bits: Optional[int] = None, **_options) -> dict:
    """pack-quantized (weight_packed int32 [rows, ceil(cols * bits / 32)], LSB first; weight_shape
    [2]; scales as int8's): columns split on whole int32 words (multiples of 32 / bits). The bit
    width, when not given, is the one whose packing gives the stored number of words."""
    if num_bits is None:
        cols = _shape2("pack-quantized", arrays["weight_shape"])[1]
        words = tuple(arrays["weight_packed"].shape)[-1]
        fits = [b for b in (4, 8, 2) if -(-cols * b // 32) == words]
        if not fits:
            _fail("pack-quantized", "weight_packed", f"{words} int32 words per row fit no 2/4/8-bit packing of {cols} columns")
        num_bits = fits[0]
    zero = arrays.get("weight_zero_point")
    rows = _shape2("pack-quantized", arrays["weight_shape"])[0]
    packed_zero = (zero is not None and num_bits < 8 and len(tuple(zero.shape)) == 2
                   and tuple(zero.shape)[0] == -(-rows // (32 // num_bits)) and rows != tuple(zero.shape)[0])
    if packed_zero:  # files: zero points packed along dim 0 (compressed-tensors): unpack, cut, re-pack
        arrays = dict(arrays, weight_zero_point=_unpack_rows(_read_all(zero), num_bits, rows))
    out = _shard_words("pack-quantized", arrays, dim, start, stop, num_bits, group_size, _scale_keys(arrays),
                       {"weight_scale", "weight_zero_point"})
    if packed_zero:
        out["weight_zero_point"] = _pack_rows(out["weight_zero_point"], num_bits)
    return out


def _unpack_rows(packed: torch.Tensor, bits: int, rows: int) -> torch.Tensor:
    """int32 [ceil(rows * bits / 32), n] packed along dim 0 (value + 2^(bits-1), LSB first, as
    compressed-tensors stores zero points) -> int8 [rows, n]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        _fail("pack-quantized", "weight_zero_point", f"packed zero points must be 2-D int32, got {packed.dtype}")
    per = 32 // bits
    words = packed.t().contiguous().numpy().astype(np.int64) & 0xFFFFFFFF  # [n, W]
    values = (words[:, :, None] >> (bits * np.arange(per))) & ((1 << bits) - 1)  # [n, W, per]
    values = values.reshape(words.shape[0], -1)[:, :rows] - (1 << (bits - 1))
    return torch.from_numpy(values.astype(np.int8)).t().contiguous()


def _pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of _unpack_rows: int8 [rows, n] -> int32 [ceil(rows * bits / 32), n]."""
    per = 32 // bits
    rows, n = q.shape
    padded = np.zeros((n, -(-rows // per) * per), dtype=np.int64)
    padded[:, :rows] = q.t().numpy().astype(np.int64) + (1 << (bits - 1))
    words = (padded.reshape(n, -1, per) << (bits * np.arange(per))).sum(-1)
    return torch.from_numpy(words.astype(np.uint32).view(np.int32)).t().contiguous()


def shard_int4(arrays: dict, dim: int, start: int, stop: int, group_size: Optional[int] = None, **_options) -> dict:
    """int4 (the pack-quantized 4-bit layout: weight_packed, weight_scale, weight_shape and
    weight_zero_point, [rows, groups] in a state_dict or packed along dim 0 in files)."""
    return shard_pack_quantized(arrays, dim, start, stop, group_size, num_bits=4)


def shard_codebook(arrays: dict, dim: int, start: int, stop: int, group_size: Optional[int] = None,
                   **_options) -> dict:
    """codebook (weight_packed int32 words of 8 4-bit indices, weight_codebook [rows, groups, 16],
    weight_shape): indices cut like 4-bit pack-quantized, tables like scales."""
    return _shard_words("codebook", arrays, dim, start, stop, 4, group_size, ("weight_codebook",),
                        {"weight_codebook"})


def _shard_words(fmt: str, arrays: dict, dim: int, start: int, stop: int, num_bits: int,
                 group_size: Optional[int], grouped: tuple, known: set) -> dict:
    _refuse_extra(fmt, arrays, {"weight_packed", "weight_shape"} | known)
    if num_bits not in (2, 4, 8):
        raise ValueError(f"{fmt} num_bits must be 2, 4 or 8, got {num_bits!r}")
    rows, cols = _shape2(fmt, arrays["weight_shape"])
    check_bounds(dim, start, stop, rows, cols)
    per = 32 // num_bits
    packed = arrays["weight_packed"]
    _want_shape(fmt, "weight_packed", packed, (rows, -(-cols // per)))
    out = _shard_scales(fmt, arrays, grouped, rows, cols, dim, start, stop, group_size)
    if dim == 0:
        out["weight_packed"] = _read(packed, slice(start, stop))
        out["weight_shape"] = _shape_tensor(arrays["weight_shape"], stop - start, cols)
    else:
        if start % per or (stop % per and stop != cols):
            raise ValueError(f"{num_bits}-bit {fmt} weights split on columns only at multiples of {per} "
                             f"(whole int32 words); columns [{start}, {stop}) of {cols} do not")
        out["weight_packed"] = _read(packed, (slice(None), slice(start // per, -(-stop // per))))
        out["weight_shape"] = _shape_tensor(arrays["weight_shape"], rows, stop - start)
    return {k: v.contiguous() for k, v in out.items()}


# ------------------------------------------------------------------------------ layout rules
# Rules by canonical layout (the checkpoint's tensor names), for a stored layer whose format
# registers no rule, or a registered format whose canonical arrays are one of these layouts.
LAYOUTS = (
    (frozenset({"weight_packed", "weight_shape", "weight_codebook"}), shard_codebook),
    (frozenset({"weight_packed", "weight_shape", "weight_scale"}), shard_pack_quantized),
    (frozenset({"weight", "weight_scale"}), shard_int8),
)


def layout_rule(keys):
    """The rule for canonical arrays named `keys` (by layout), or None."""
    keys = set(keys)
    return next((rule for need, rule in LAYOUTS if need <= keys), None)


# ---------------------------------------------------------------------------------------- dense
def shard_dense(weight, dim: int, start: int, stop: int) -> torch.Tensor:
    """Rows or columns of a dense [out, in] weight (tensor or lazy array)."""
    rows, cols = tuple(weight.shape)
    check_bounds(dim, start, stop, rows, cols)
    return _read(weight, slice(start, stop) if dim == 0 else (slice(None), slice(start, stop))).contiguous()


def _shard_sparse_int8(fmt: str, sparse_rule, sparse_keys: set, arrays: dict, dim: int, start: int, stop: int,
                       group_size: Optional[int]) -> dict:
    """A sparse layout holding int8 values (cut by `sparse_rule`) plus weight_scale (rows, or
    column groups on group boundaries)."""
    _refuse_extra(fmt, arrays, sparse_keys | {"weight_scale"})
    rows, cols = _shape2(fmt, arrays["shape"])
    check_bounds(dim, start, stop, rows, cols)
    out = _shard_scales(fmt, arrays, ("weight_scale",), rows, cols, dim, start, stop, group_size)
    out.update(sparse_rule({k: v for k, v in arrays.items() if k in sparse_keys}, dim, start, stop))
    return out


def shard_csr_int8(arrays: dict, dim: int, start: int, stop: int, group_size: Optional[int] = None,
                   **_options) -> dict:
    """csr+int8: the sparse-bitmask arrays as shard_csr cuts them, weight_scale beside them."""
    return _shard_sparse_int8("csr+int8", shard_csr, {"shape", "compressed", "bitmask", "row_offsets"}, arrays,
                              dim, start, stop, group_size)


def shard_24_int8(arrays: dict, dim: int, start: int, stop: int, group_size: Optional[int] = None,
                  **_options) -> dict:
    """2:4+int8: the sparse-24-bitmask arrays as shard_24 cuts them, weight_scale beside them."""
    return _shard_sparse_int8("2:4+int8", shard_24, {"shape", "compressed", "bitmask"}, arrays, dim, start, stop,
                              group_size)
