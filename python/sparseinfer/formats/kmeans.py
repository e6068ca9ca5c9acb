"""1-D k-means for weight sharing (Han et al. 2016, "Deep Compression", sec. 3): every output row of
a weight [rows, cols], or every group of ``group_size`` consecutive input columns of a row, gets its
own table of k shared values, and each weight becomes a small index into that table.

``kmeans_codebook`` clusters all rows/groups at once. Lloyd's iterations in one dimension need no
distance matrix: the values of a row are sorted once, a cluster is then a contiguous run of the
sorted values between two midpoints of neighbouring centroids, so an assignment step is one batched
``searchsorted`` of the k-1 midpoints into the sorted row, and an update step reads each run's sum
and count off prefix sums (float64). Per iteration that is O(rows * k * log cols) work; the sort is
done once. Clustering a 2048x5632 layer per channel takes a few seconds on one core.

Initialisation (``init``):
- "linear" (default): k centroids evenly spaced over [min, max] of the row. Deep Compression found
  it best for accuracy (it keeps the rare large weights represented). Measured here on the trained
  `sparseinfer quality` models, per channel, 20 iterations (100 change nothing): k-means++ reaches a
  1-17% lower weight MSE, yet the models are no better: char Llama perplexity (dense 4.171) at
  4 bits linear 4.190 / k-means++ 4.207 / quantile 4.207, at 3 bits 4.324 / 4.335 / 4.322; digits
  MLP accuracy at 3 bits 98.06 / 97.50 / 98.06 % (4 bits: all equal to dense). k-means++ also costs
  2-4x the time (k passes over the data), so linear is the default.
- "kmeans++": Arthur & Vassilvitskii's D^2 seeding, drawn from a torch.Generator seeded with
  ``seed`` (deterministic for a given seed).
- "quantile": centroids at the (j + 0.5) / k quantiles of the row (density-based init).

Empty clusters (no value between their midpoints) are re-seeded deterministically: in every
iteration, each row with an empty cluster moves one of them onto the value with the largest squared
error of that row (lowest position on ties), then its centroids are re-sorted; the iterations end
with an assignment and an update without re-seeding, so every returned centroid is the mean of the
values mapped to it (an entry nothing maps to keeps its last value).

Input is read as float32 (exact for fp32, fp16 and bf16 weights; float64 is rounded). Exactness:
a row/group with at most k distinct values (k - 1 non-zero ones with keep_zeros) skips
the iterations; its table holds those values (the last one repeated to fill the table) and the
indices reproduce every weight bit for bit (-0.0 comes back as +0.0 when keep_zeros maps it to the
zero entry).

keep_zeros=True (pruned weights): entry 0 of every table is exactly 0.0, exactly the weights equal
to zero map to it, and the non-zero weights are clustered into the other k - 1 entries.

No imports from sparseinfer.compress: the codebook format uses this module when packing.
"""
from __future__ import annotations

from typing import Optional

import torch

INITS = ("linear", "kmeans++", "quantile")


def _check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return value


def num_groups(cols: int, group_size: Optional[int]) -> int:
    """Groups of `group_size` consecutive input columns in a row (the last may be shorter); 1 when
    group_size is None (one table per output row)."""
    return 1 if group_size is None or cols == 0 else -(-cols // group_size)


def _check_weight(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D floating tensor [rows, cols], got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] == 0:
        raise ValueError(f"weight has no columns (shape {tuple(weight.shape)})")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight holds inf or nan; k-means needs finite values")
    return weight.detach()


def kmeans_codebook(weight: torch.Tensor, k: int = 16, group_size: Optional[int] = None, iters: int = 20,
                    keep_zeros: bool = False, *, init: str = "linear",
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster each row (or group of input columns) of `weight` into k shared values.

    Args:
        weight: float [rows, cols] (any float dtype; finite).
        k: table entries, 2..256 (16 for 4-bit indices).
        group_size: None (one table per output row) or a positive number of consecutive input
            columns per table; the last group of a row may be shorter.
        iters: Lloyd iterations (>= 0; 0 keeps the initial centroids, assigning to the nearest).
        keep_zeros: entry 0 of every table is 0.0 and exactly the zero weights map to it.
        init: "linear" (default), "kmeans++" or "quantile" (see the module docstring).
        seed: the kmeans++ generator's seed.
    Returns:
        (table float32 [rows, groups, k], indices uint8 [rows, cols]); ``codebook_dequantize(table,
        indices, group_size)`` gives the clustered weight.
    Raises:
        ValueError on a bad argument (naming it).
    """
    weight = _check_weight(weight)
    k = _check_int("k", k, 2, 256)
    if group_size is not None:
        _check_int("group_size", group_size, 1)
    iters = _check_int("iters", iters, 0)
    if not isinstance(keep_zeros, bool):
        raise ValueError(f"keep_zeros must be a bool, got {keep_zeros!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    _check_int("seed", seed, 0)
    rows, cols = weight.shape
    size = cols if group_size is None else min(group_size, cols)
    full, rem = cols // size, cols % size
    x = weight.to(device="cpu", dtype=torch.float32).contiguous()  # exact for fp32/fp16/bf16; sums run in float64
    generator = torch.Generator().manual_seed(seed)
    tables, indices = [], []
    if full:
        block = x[:, : full * size].reshape(rows * full, size)
        table, idx = _cluster_rows(block, k, iters, keep_zeros, init, generator)
        tables.append(table.reshape(rows, full, k))
        indices.append(idx.reshape(rows, full * size))
    if rem:
        table, idx = _cluster_rows(x[:, full * size:].contiguous(), k, iters, keep_zeros, init, generator)
        tables.append(table.reshape(rows, 1, k))
        indices.append(idx)
    table = torch.cat(tables, 1) if len(tables) > 1 else tables[0]
    idx = torch.cat(indices, 1) if len(indices) > 1 else indices[0]
    return table.float().contiguous(), idx.to(torch.uint8).contiguous()


def codebook_dequantize(table: torch.Tensor, indices: torch.Tensor, group_size: Optional[int]) -> torch.Tensor:
    """The dense weight [rows, cols] a (table [rows, groups, k], indices [rows, cols]) pair encodes,
    in the table's dtype."""
    if not isinstance(table, torch.Tensor) or table.dim() != 3 or not table.is_floating_point():
        raise ValueError(f"table must be a 3-D floating tensor [rows, groups, k], got "
                         f"{getattr(table, 'dtype', type(table).__name__)} {tuple(getattr(table, 'shape', ()))}")
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.dtype not in (
            torch.uint8, torch.int16, torch.int32, torch.int64):
        raise ValueError(f"indices must be a 2-D integer tensor [rows, cols] (uint8), got "
                         f"{getattr(indices, 'dtype', type(indices).__name__)} "
                         f"{tuple(getattr(indices, 'shape', ()))}")
    if group_size is not None:
        _check_int("group_size", group_size, 1)
    rows, cols = indices.shape
    groups, k = num_groups(cols, group_size), table.shape[2]
    if table.shape[:2] != (rows, groups):
        raise ValueError(f"table shape {tuple(table.shape)} does not match indices {tuple(indices.shape)} "
                         f"with group_size={group_size}: expected [{rows}, {groups}, k]")
    idx = indices.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise ValueError(f"indices must lie in [0, {k}) (the table has {k} entries), got "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    size = cols if group_size is None else group_size
    group_of_col = torch.arange(cols, device=idx.device) // size
    flat = table.reshape(rows, groups * k)
    return flat.gather(1, group_of_col.unsqueeze(0) * k + idx)


# --------------------------------------------------------------------------------------------
# the batched 1-D Lloyd iterations: x [n, m] float64 -> (table [n, k], indices [n, m] int64)

def _gather(prefix: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Per-run totals: prefix [n, m + 1] (0 first), bounds [n, c + 1] -> [n, c]."""
    at = prefix.gather(1, bounds)
    return at[:, 1:] - at[:, :-1]


def _bounds(xs: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Run boundaries [n, c + 1] in the sorted rows xs of the clusters of sorted centroids [n, c]:
    a value goes to the nearest centroid (a value exactly on a midpoint goes to the upper one)."""
    n, m = xs.shape
    mid = (centroids[:, 1:] + centroids[:, :-1]) * 0.5
    pos = torch.searchsorted(xs, mid.contiguous(), side="left")
    return torch.cat([xs.new_zeros(n, 1, dtype=torch.long), pos, xs.new_full((n, 1), m, dtype=torch.long)], 1)


def _labels(bounds: torch.Tensor, m: int) -> torch.Tensor:
    """Cluster of every sorted position [n, m] from run boundaries [n, c + 1]."""
    n = bounds.shape[0]
    marks = torch.zeros(n, m + 1, dtype=torch.long)
    marks.scatter_add_(1, bounds[:, 1:-1], torch.ones_like(bounds[:, 1:-1]))
    return marks.cumsum(1)[:, :m]


def _init(xs, valid, count, lo, hi, c, init, generator):
    n, m = xs.shape
    if init == "linear":
        steps = torch.arange(c, dtype=torch.float64) / max(c - 1, 1)
        return lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * steps
    if init == "quantile":
        # the valid values in order are at the positions where the running valid count steps up
        ranks = ((torch.arange(c, dtype=torch.float64) + 0.5) / c * count.unsqueeze(1).double()).long()
        ranks = ranks.clamp(max=(count - 1).clamp(min=0).unsqueeze(1))
        running = valid.long().cumsum(1)
        pos = torch.searchsorted(running, (ranks + 1).contiguous(), side="left").clamp(max=m - 1)
        return torch.where(count.unsqueeze(1) > 0, xs.gather(1, pos), torch.zeros(n, c, dtype=torch.float64))
    # kmeans++: first centroid uniform over the valid values, then by D^2 (ties in weight 0 -> uniform)
    weights = valid.double()
    weights[count == 0] = 1.0
    first = torch.multinomial(weights, 1, generator=generator)
    centroids = [xs.gather(1, first)]
    d2 = (xs - centroids[0]).pow(2) * valid
    for _ in range(1, c):
        w = d2.clone()
        flat = w.sum(1) <= 0
        w[flat] = weights[flat]
        pick = torch.multinomial(w, 1, generator=generator)
        centroids.append(xs.gather(1, pick))
        d2 = torch.minimum(d2, (xs - centroids[-1]).pow(2) * valid)
    return torch.sort(torch.cat(centroids, 1), 1).values


def _cluster_rows(x: torch.Tensor, k: int, iters: int, keep_zeros: bool, init: str,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n, m = x.shape
    if n == 0:
        return torch.zeros(0, k, dtype=torch.float64), torch.zeros(0, m, dtype=torch.long)
    xs, perm = torch.sort(x, dim=1, stable=True)
    xs = xs.double().contiguous()
    valid = xs != 0 if keep_zeros else torch.ones_like(xs, dtype=torch.bool)
    c = k - 1 if keep_zeros else k
    vf = valid.double()
    zero = xs.new_zeros(n, 1)
    sums = torch.cat([zero, (xs * vf).cumsum(1)], 1)
    counts = torch.cat([zero, vf.cumsum(1)], 1)
    count = valid.sum(1)

    # distinct valid values per row; rows with at most c of them are stored exactly
    prev = torch.cat([xs.new_full((n, 1), float("nan")), xs[:, :-1]], 1)
    new = valid & (xs != prev)
    distinct = new.sum(1)
    exact = distinct <= c
    big = torch.tensor(float("inf"), dtype=torch.float64)
    if keep_zeros:
        lo = torch.where(valid, xs, big).amin(1)
        hi = torch.where(valid, xs, -big).amax(1)
    else:
        lo, hi = xs[:, 0].clone(), xs[:, -1].clone()
    lo = torch.where(count > 0, lo, torch.zeros_like(lo))
    hi = torch.where(count > 0, hi, torch.zeros_like(hi))

    # exact tables: the distinct values in order, the largest repeated
    rank = (new.long().cumsum(1) - 1).clamp(max=c).masked_fill_(~new, c)  # column c: discarded
    exact_table = hi.unsqueeze(1).expand(n, c + 1).clone()
    exact_table.scatter_(1, rank, torch.where(new, xs, hi.unsqueeze(1).expand(n, m)))
    exact_table = exact_table[:, :c]
    del prev, new, rank

    centroids = _init(xs, valid, count, lo, hi, c, init, generator)
    centroids = torch.where(exact.unsqueeze(1), exact_table, centroids)
    inexact = (~exact).nonzero().flatten()

    def update(cent, bounds):
        total, size = _gather(sums, bounds), _gather(counts, bounds)
        means = torch.where(size > 0, total / size.clamp(min=1), cent)
        return torch.where(exact.unsqueeze(1), exact_table, means), size

    for _ in range(iters):
        previous = centroids
        centroids, size = update(centroids, _bounds(xs, centroids))
        empty_rows = inexact[(size[inexact] == 0).any(1)] if inexact.numel() else inexact
        if empty_rows.numel():
            centroids = _reseed(xs[empty_rows], valid[empty_rows], centroids, size, empty_rows)
        elif torch.equal(previous, centroids):
            break
    bounds = _bounds(xs, centroids)
    centroids, _ = update(centroids, bounds)
    labels = _labels(bounds, m)
    if keep_zeros:
        labels = torch.where(valid, labels + 1, torch.zeros_like(labels))
        centroids = torch.cat([xs.new_zeros(n, 1), centroids], 1)
    out = torch.empty_like(labels)
    out.scatter_(1, perm, labels)
    return centroids, out


def _reseed(xs, valid, centroids, size, rows):
    """Move the first empty cluster of each of `rows` onto its row's worst-fit value, keep sorted."""
    cent = centroids[rows]
    bounds = _bounds(xs, cent)
    labels = _labels(bounds, xs.shape[1])
    err = (xs - cent.gather(1, labels)).pow(2) * valid
    worst = err.argmax(1, keepdim=True)  # first maximum: deterministic
    first_empty = (size[rows] == 0).long().argmax(1, keepdim=True)
    cent = cent.scatter(1, first_empty, xs.gather(1, worst))
    centroids = centroids.clone()
    centroids[rows] = torch.sort(cent, 1).values
    return centroids
