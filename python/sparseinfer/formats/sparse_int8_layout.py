"""The "window lanes" layout the sparse int8 kernels run (formats ``csr+int8`` and ``2:4+int8``;
see csrc/include/sparseinfer/sparse_int8_linear.h for the byte-level statement).

Rows go in pairs, columns in windows of 16. A pair's non-zeros in one window fill 16-slot lanes
(row A's in slots 0..7, row B's in 8..15, a row with more going on in the next lane), each slot
an int8 value and its 4-bit column in the window; lane i of windows 2j and 2j + 1 form step i of
window pair j, the unit one 256-bit load of activations serves. Packing and unpacking are
vectorised numpy over the non-zeros; :func:`prove` re-checks what the kernels' memory safety
rests on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._native import _C
from .groups import ceil_div

WINDOW = _C.build_info()["sparse_int8_window"]
MAX_COLS = _C.build_info()["sparse_int8_max_cols"]
WINDOW_PAIR = 2 * WINDOW
LANE_SLOTS = 16
ROW_SLOTS = LANE_SLOTS // 2  # a row's slots in a lane
MAX_STEPS_PER_CELL = 2  # a row holds at most 16 non-zeros in a window: two lanes


@dataclass(frozen=True)
class SparseInt8Packed:
    values: torch.Tensor      # int8 [steps, 32]
    idx: torch.Tensor         # uint8 [steps, 16]
    counts: torch.Tensor      # uint8 [row_pairs, kp / 32]
    step_wp: torch.Tensor     # int16 [steps]: the window pair of each step (the kernel reads uint16)
    pair_steps: torch.Tensor  # int64 [row_pairs + 1]
    scales: torch.Tensor      # fp32 [2 * row_pairs, groups]
    uniform: bool = False     # exactly one step per window pair (2:4)

    @property
    def steps(self) -> int:
        return self.values.shape[0]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.values, self.idx, self.counts, self.step_wp, self.pair_steps, self.scales

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def bytes_read(self, nnz: int, path: str) -> int:
        """Weight bytes a call streams: the whole layout on every path."""
        return self.nbytes()


def padded_cols(cols: int) -> int:
    return ceil_div(cols, WINDOW_PAIR) * WINDOW_PAIR


def pack(rows: int, cols: int, row: np.ndarray, col: np.ndarray, value: np.ndarray,
         scales: torch.Tensor, uniform: bool = False) -> SparseInt8Packed:
    """The layout of the non-zeros (row, col, int8 value), sorted by row then column (callers
    prove that), with fp32 scales [rows, groups]. `uniform` (at most 8 non-zeros per row and
    window, as 2:4 guarantees): every window pair has exactly one step."""
    pairs, kp = ceil_div(rows, 2), padded_cols(cols)
    windows, wpairs = kp // WINDOW, kp // WINDOW_PAIR
    cell = row * windows + col // WINDOW
    per_cell = np.bincount(cell, minlength=2 * pairs * windows).reshape(2 * pairs, windows)
    lanes = -(-per_cell // ROW_SLOTS)                # [2 * pairs, windows]
    lanes = np.maximum(lanes[0::2], lanes[1::2])    # [pairs, windows]: rows A and B share lanes
    if uniform:
        if lanes.size and int(lanes.max()) > 1:
            raise ValueError(f"a uniform layout takes at most {ROW_SLOTS} non-zeros per row and window")
        counts = np.ones((pairs, wpairs), np.uint8)
    else:
        counts = np.maximum(lanes[:, 0::2], lanes[:, 1::2]).astype(np.uint8)  # [pairs, wpairs]
    step_base = np.zeros(pairs * wpairs + 1, np.int64)
    np.cumsum(counts.reshape(-1), out=step_base[1:])
    steps = int(step_base[-1])
    cell_start = np.zeros(per_cell.size + 1, np.int64)
    np.cumsum(per_cell.reshape(-1), out=cell_start[1:])
    pair, in_b, window = row // 2, row & 1, col // WINDOW
    rank = np.arange(row.size, dtype=np.int64) - cell_start[cell]
    step = step_base[pair * wpairs + window // 2] + rank // ROW_SLOTS
    slot, half = rank % ROW_SLOTS + in_b * ROW_SLOTS, window & 1
    values = np.zeros((steps, 2 * LANE_SLOTS), np.int8)
    values[step, half * LANE_SLOTS + slot] = value
    nibble = np.zeros((steps, 2, LANE_SLOTS), np.uint8)
    nibble[step, half, slot] = col % WINDOW
    pair_steps = np.append(step_base[np.arange(pairs) * wpairs], steps).astype(np.int64)
    padded_scales = torch.zeros(2 * pairs, scales.shape[1], dtype=torch.float32)
    padded_scales[:rows] = scales
    return SparseInt8Packed(torch.from_numpy(values), torch.from_numpy(nibble[:, 0] | (nibble[:, 1] << 4)),
                            torch.from_numpy(counts), torch.from_numpy(_step_windows(counts)),
                            torch.from_numpy(pair_steps), padded_scales, uniform)


def _step_windows(counts: np.ndarray) -> np.ndarray:
    """int16 [steps]: the window pair of every step, from counts [pairs, wpairs]."""
    wpairs = counts.shape[1]
    return np.repeat(np.tile(np.arange(wpairs, dtype=np.int16), counts.shape[0]),
                     counts.reshape(-1).astype(np.int64))


def unpack(p: SparseInt8Packed, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored non-zeros (row, col, int8 value), sorted by row then column."""
    wpairs = p.counts.shape[1]
    cell = np.repeat(np.arange(p.counts.numel(), dtype=np.int64), p.counts.numpy().reshape(-1).astype(np.int64))
    pair, wpair = cell // max(1, wpairs), cell % max(1, wpairs)
    values = p.values.numpy().reshape(-1, 2, LANE_SLOTS)
    idx = p.idx.numpy()
    nibble = np.stack((idx & 15, idx >> 4), axis=1)  # [steps, half, slot]
    s, h, j = np.nonzero(values)
    row = 2 * pair[s] + (j >= ROW_SLOTS)
    col = wpair[s] * WINDOW_PAIR + h * WINDOW + nibble[s, h, j]
    order = np.lexsort((col, row))
    return row[order], col[order], values[s, h, j][order]


def prove(p: SparseInt8Packed, rows: int, cols: int, groups: int) -> None:
    """Raise ValueError unless the kernels' memory safety holds: shapes and dtypes, counts <= 2,
    pair_steps the exclusive prefix sums of the pairs' counts ending at the number of steps,
    step_wp the counts spelled out, and a uniform layout one step per window pair."""
    pairs, kp = ceil_div(rows, 2), padded_cols(cols)
    expect = {"values": (p.values, torch.int8, None, 2 * LANE_SLOTS), "idx": (p.idx, torch.uint8, None, LANE_SLOTS),
              "counts": (p.counts, torch.uint8, pairs, kp // WINDOW_PAIR),
              "step_wp": (p.step_wp, torch.int16, None, None),
              "pair_steps": (p.pair_steps, torch.int64, pairs + 1, None),
              "scales": (p.scales, torch.float32, 2 * pairs, groups)}
    steps = p.values.shape[0] if p.values.dim() == 2 else -1
    for name, (t, dtype, dim0, dim1) in expect.items():
        shape = (steps if dim0 is None else dim0,) + (() if dim1 is None else (dim1,))
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape \
                or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"{name}: must be a contiguous CPU {dtype} tensor of shape {shape}, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} of shape {tuple(getattr(t, 'shape', ()))}")
    if p.counts.numel() and int(p.counts.max()) > MAX_STEPS_PER_CELL:
        raise ValueError(f"counts: a (row pair, window pair) holds at most {MAX_STEPS_PER_CELL} steps")
    starts = np.zeros(pairs + 1, np.int64)
    np.cumsum(p.counts.numpy().sum(1, dtype=np.int64), out=starts[1:])
    if not np.array_equal(starts, p.pair_steps.numpy()) or starts[-1] != steps:
        raise ValueError("pair_steps: must be the prefix sums of the pairs' counts, ending at the number of steps")
    if not np.array_equal(_step_windows(p.counts.numpy()), p.step_wp.numpy()):
        raise ValueError("step_wp: must list the window pair of every step, as counts give them")
    if p.uniform and bool((p.counts != 1).any()):
        raise ValueError("counts: a uniform layout has exactly one step per window pair")
