"""Groups of input columns that share a quantization scale (int8, int4, codebook): the
group-size rule, group counts, a [rows, cols] -> [rows, groups, width] view, and the group size
a stored scale (or table) shape implies."""
from __future__ import annotations

from typing import Callable, Optional

import torch

GROUP_MULTIPLE = 32  # group sizes are multiples of 32 (8 VNNI K-quads, half a 4-bit chunk)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def check_group_size(group_size: Optional[int]) -> None:
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < GROUP_MULTIPLE \
            or group_size % GROUP_MULTIPLE:
        raise ValueError(f"group_size must be None (per channel) or a positive multiple of "
                         f"{GROUP_MULTIPLE} (e.g. 32, 64, 128), got {group_size!r}")


def num_groups(cols: int, group_size: Optional[int]) -> int:
    return 1 if group_size is None else max(1, ceil_div(cols, group_size))


def by_group(t: torch.Tensor, groups: int, group_size: Optional[int]) -> torch.Tensor:
    """[rows, cols] -> [rows, groups, width] zero-padded (width = cols when per channel)."""
    rows, cols = t.shape
    width = cols if group_size is None else group_size
    if groups * width == cols:
        return t.contiguous().view(rows, groups, width)
    padded = torch.zeros(rows, groups * width, dtype=t.dtype)
    padded[:, :cols] = t
    return padded.view(rows, groups, width)


def group_size_for(cols: int, groups: int, hint: Optional[int], fail: Callable[[str, str], None],
                   array: str = "weight_scale") -> Optional[int]:
    """The group size giving `groups` groups over `cols` columns: `hint` if it does, else the
    smallest multiple of 32 that does; fail(array, why) if none."""
    if groups == 1:
        return None
    if hint is not None and ceil_div(cols, hint) == groups:
        return hint
    guess = ceil_div(ceil_div(cols, groups), GROUP_MULTIPLE) * GROUP_MULTIPLE
    if ceil_div(cols, guess) != groups:
        fail(array, f"{groups} groups fit no group size for {cols} columns")
    return guess
