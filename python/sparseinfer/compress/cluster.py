"""Weight sharing by k-means clustering and trained quantization (Han et al. 2016, "Deep Compression:
Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman Coding", sec. 3-4).

``cluster_weights`` gives every output row (per="channel") or every group of ``group_size``
consecutive input columns (per="group") of each targeted Linear its own table of 2^bits shared
values (1-D k-means, ``sparseinfer.formats.kmeans``), writes the clustered values into the weights
in place (so ``sparseinfer.sparsify(model, format="codebook")`` later packs them exactly: every
row/group holds at most 2^bits distinct values) and returns a ``ClusterResult`` with the tables,
the indices and a storage report:

- runtime size: bits-wide indices (4 for the codebook kernels) plus the tables in fp16;
- Deep Compression size: the indices Huffman-coded (one code per layer, built from the layer's
  index frequencies), plus the tables and the code lengths (one byte per table entry). A layer whose
  pruned zeros were kept (keep_zeros) stores only its non-zeros, as the paper does: each non-zero
  as a (relative index, weight index) pair, the relative index being the distance to the previous
  non-zero in row-major order in ``rel_bits`` bits (5, the paper's choice for fully connected
  layers; a longer gap takes filler entries pointing at zero), both streams Huffman-coded.

``finetune_centroids`` is the paper's trained quantization: the gradient of every weight is summed
per cluster (scatter-add over its index) and the shared centroids are updated by an optimizer;
after each step the weights are rewritten from the tables, so the model stays exactly clustered
(and pruned weights stay zero: entry 0 of a keep_zeros table is never updated).
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from ..formats.kmeans import INITS, codebook_dequantize, kmeans_codebook
from ..nn.linear_like import is_hf_conv1d, is_linear_like
from .targets import LayerFilter

METHODS = ("kmeans",)
PER = ("channel", "group")
TABLE_BITS = 16          # table entries counted as fp16 in both size figures
CODE_LENGTH_BITS = 8     # a Huffman code is sent as one length byte per symbol
AUTO_ZERO_FRACTION = 0.01  # keep_zeros="auto": the layer has at least 1% exact zeros (pruned)


# ---------------------------------------------------------------------------- Huffman coding

def huffman_code_lengths(frequencies) -> list[int]:
    """Code length in bits of each symbol of an optimal prefix code (Huffman) for these counts;
    0 for unused symbols, 1 when only one symbol is used. Ties are broken by symbol order, so the
    result is deterministic."""
    freqs = [int(f) for f in (frequencies.tolist() if isinstance(frequencies, torch.Tensor) else frequencies)]
    if any(f < 0 for f in freqs):
        raise ValueError("frequencies must be non-negative")
    lengths = [0] * len(freqs)
    heap = [(f, i, [i]) for i, f in enumerate(freqs) if f > 0]
    if len(heap) == 1:
        lengths[heap[0][2][0]] = 1
        return lengths
    heapq.heapify(heap)
    counter = itertools.count(len(freqs))
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for s in itertools.chain(s1, s2):
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, next(counter), s1 + s2))
    return lengths


def huffman_bits(frequencies) -> int:
    """Bits of a stream with these symbol counts once Huffman-coded (the code itself excluded)."""
    freqs = frequencies.tolist() if isinstance(frequencies, torch.Tensor) else list(frequencies)
    return sum(int(f) * n for f, n in zip(freqs, huffman_code_lengths(freqs)))


def relative_index_streams(nonzero: torch.Tensor, indices: torch.Tensor, k: int,
                           rel_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symbol counts of Deep Compression's sparse storage of one layer: (counts of the relative
    indices [2^rel_bits], counts of the weight indices [k]).

    The non-zeros are visited in row-major order; each stores the distance d >= 1 to the previous
    non-zero (the first one: its position + 1). A distance above 2^rel_bits is split into filler
    entries of distance 2^rel_bits whose weight index is 0 (the zero entry). Distances 1..2^rel_bits
    are the symbols 0..2^rel_bits - 1."""
    span = 1 << rel_bits
    flat = nonzero.reshape(-1)
    positions = flat.nonzero().flatten()
    gaps = torch.diff(positions, prepend=positions.new_tensor([-1]))
    entries = (gaps + span - 1) // span                # entries per gap, fillers included
    fillers = int((entries - 1).sum())
    last = gaps - (entries - 1) * span                 # the final distance, 1..span
    rel = torch.bincount(last - 1, minlength=span)
    rel[span - 1] += fillers
    idx = torch.bincount(indices.reshape(-1)[positions].long(), minlength=k)
    idx[0] += fillers
    return rel, idx


# ---------------------------------------------------------------------------- results

@dataclass
class ClusteredLayer:
    """One clustered layer: its tables and indices, the error and the two storage figures."""
    name: str
    shape: tuple[int, int]          # (out_features, in_features)
    bits: int
    group_size: Optional[int]       # None: one table per output row
    keep_zeros: bool
    table: torch.Tensor             # float32 [out, groups, 2^bits], values representable in the weight dtype
    indices: torch.Tensor           # uint8 [out, in]
    zero_fraction: float            # exact zeros in the weight before clustering
    rel_error: float                # ||W_clustered - W||_F / ||W||_F at clustering time
    huffman_bits: int = 0           # Deep Compression: coded indices (+ relative indices when sparse)
    code_bits: int = 0              # the Huffman codes themselves (one length byte per symbol)
    coding: str = ""                # "huffman(indices)" or "relative index (5 bits) + huffman"

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def table_bits(self) -> int:
        return self.table.numel() * TABLE_BITS

    @property
    def runtime_bits(self) -> int:
        """Fixed-width indices + fp16 tables: what the codebook kernels read."""
        return self.numel * self.bits + self.table_bits

    @property
    def deep_compression_bits(self) -> int:
        return self.huffman_bits + self.code_bits + self.table_bits

    def dequantized(self) -> torch.Tensor:
        """The clustered weight [out, in], float32."""
        return codebook_dequantize(self.table, self.indices, self.group_size)


@dataclass
class ClusterResult:
    """What cluster_weights did: per-layer tables and indices, skipped layers, storage report."""
    bits: int
    method: str
    per: str
    group_size: Optional[int]
    layers: dict[str, ClusteredLayer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # name -> reason

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers.values())

    @property
    def runtime_bytes(self) -> float:
        return sum(layer.runtime_bits for layer in self.layers.values()) / 8

    @property
    def deep_compression_bytes(self) -> float:
        return sum(layer.deep_compression_bits for layer in self.layers.values()) / 8

    @property
    def runtime_bits_per_weight(self) -> float:
        return 8 * self.runtime_bytes / max(1, self.numel)

    @property
    def deep_compression_bits_per_weight(self) -> float:
        return 8 * self.deep_compression_bytes / max(1, self.numel)

    def write(self, model: nn.Module) -> None:
        """Write every layer's clustered values (tables[indices]) into `model`'s weights."""
        modules = dict(model.named_modules())
        for name, layer in self.layers.items():
            module = modules.get(name)
            if module is None or not is_linear_like(module):
                raise ValueError(f"model has no Linear layer {name!r} (was it replaced after clustering?)")
            _write(module, layer.dequantized())

    def is_clustered(self, model: nn.Module) -> bool:
        """True when every clustered layer of `model` holds exactly tables[indices]."""
        modules = dict(model.named_modules())
        for name, layer in self.layers.items():
            module = modules.get(name)
            if module is None or not is_linear_like(module):
                return False
            weight = _rows(module).detach()
            if not torch.equal(weight.float(), layer.dequantized().to(weight.dtype).float()):
                return False
        return True

    def finetune(self, model: nn.Module, batches: Iterable[Any], loss_fn, lr: float = 1e-3,
                 steps: Optional[int] = None, **kwargs) -> list[float]:
        """finetune_centroids(model, self, ...)."""
        return finetune_centroids(model, self, batches, loss_fn, lr=lr, steps=steps, **kwargs)

    def to_dict(self) -> dict:
        return {
            "bits": self.bits, "method": self.method, "per": self.per, "group_size": self.group_size,
            "weights": self.numel, "runtime_bytes": self.runtime_bytes,
            "deep_compression_bytes": self.deep_compression_bytes,
            "runtime_bits_per_weight": self.runtime_bits_per_weight,
            "deep_compression_bits_per_weight": self.deep_compression_bits_per_weight,
            "layers": [{"name": l.name, "shape": list(l.shape), "keep_zeros": l.keep_zeros,
                        "zero_fraction": l.zero_fraction, "rel_error": l.rel_error,
                        "runtime_bits": l.runtime_bits, "deep_compression_bits": l.deep_compression_bits,
                        "coding": l.coding} for l in self.layers.values()],
            "skipped": dict(self.skipped),
        }

    def __str__(self) -> str:
        lines = [f"{'layer':32s} {'shape':>11s} {'zeros':>6s} {'rel err':>8s} {'runtime b/w':>11s} "
                 f"{'DC b/w':>7s}  coding"]
        for l in self.layers.values():
            lines.append(f"{l.name:32s} {l.shape[0]:>5d}x{l.shape[1]:<5d} {l.zero_fraction:6.1%} "
                         f"{l.rel_error:8.4f} {l.runtime_bits / l.numel:11.3f} "
                         f"{l.deep_compression_bits / l.numel:7.3f}  {l.coding}")
        for name, reason in self.skipped.items():
            lines.append(f"{name:32s} skipped: {reason}")
        where = "per output channel" if self.group_size is None else f"per group of {self.group_size} inputs"
        lines.append(f"{len(self.layers)} layers, {self.numel} weights clustered ({self.bits}-bit {self.method}, "
                     f"{where}): runtime {self.runtime_bits_per_weight:.3f} bits/weight "
                     f"({self.runtime_bytes / 1e6:.3f} MB: indices + fp16 tables), Deep Compression "
                     f"{self.deep_compression_bits_per_weight:.3f} bits/weight "
                     f"({self.deep_compression_bytes / 1e6:.3f} MB: Huffman-coded)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- clustering

def _rows(module: nn.Module) -> torch.Tensor:
    """The weight as [out, in] (a view; Conv1D stores [in, out])."""
    return module.weight.t() if is_hf_conv1d(module) else module.weight


def _write(module: nn.Module, dense_rows: torch.Tensor) -> None:
    with torch.no_grad():
        _rows(module).copy_(dense_rows.to(device=module.weight.device, dtype=module.weight.dtype))


def _check_args(model, bits, method, per, group_size, filter, keep_zeros, iters, init, rel_bits):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8 (2^bits table entries, uint8 indices; the codebook "
                         f"format packs bits <= 4), got {bits!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if per not in PER:
        raise ValueError(f"per must be one of {PER} (one table per output channel, or per group of "
                         f"group_size input columns), got {per!r}")
    if per == "group" and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be a positive int when per='group', got {group_size!r}")
    if filter is not None and not callable(filter):
        raise ValueError(f"filter must be a callable (name, module) -> bool, got {type(filter).__name__}")
    if not (isinstance(keep_zeros, bool) or (isinstance(keep_zeros, str) and keep_zeros == "auto")):
        raise ValueError(f"keep_zeros must be 'auto', True or False, got {keep_zeros!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(rel_bits, bool) or not isinstance(rel_bits, int) or not 1 <= rel_bits <= 16:
        raise ValueError(f"rel_bits must be an int in 1..16, got {rel_bits!r}")


def _tied(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def _storage(layer: ClusteredLayer, weight_rows: torch.Tensor, rel_bits: int) -> None:
    k = 1 << layer.bits
    if layer.keep_zeros:
        rel, idx = relative_index_streams(weight_rows != 0, layer.indices, k, rel_bits)
        layer.huffman_bits = huffman_bits(rel) + huffman_bits(idx)
        layer.code_bits = (len(rel) + k) * CODE_LENGTH_BITS
        layer.coding = f"relative index ({rel_bits} bits) + Huffman"
    else:
        counts = torch.bincount(layer.indices.reshape(-1).long(), minlength=k)
        layer.huffman_bits = huffman_bits(counts)
        layer.code_bits = k * CODE_LENGTH_BITS
        layer.coding = "Huffman(indices)"


def cluster_weights(model: nn.Module, bits: int = 4, method: str = "kmeans", per: str = "channel",
                    group_size: Optional[int] = 128, filter: LayerFilter = None,
                    keep_zeros: Union[str, bool] = "auto", *, iters: int = 20, init: str = "linear",
                    rel_bits: int = 5) -> ClusterResult:
    """Cluster the weights of every targeted Linear in place (Deep Compression's weight sharing).

    Args:
        model: the model; every nn.Linear / Hugging Face Conv1D is a target unless `filter` vetoes
            it. Embeddings, convolutions and norms are never touched. A Linear whose weight is tied
            to another parameter (a head sharing the embedding matrix) is skipped: clustering it in
            place would change the other module too.
        bits: index width, 1..8; each table holds 2^bits values (4: the codebook format).
        method: "kmeans" (1-D k-means, ``sparseinfer.formats.kmeans.kmeans_codebook``).
        per: "channel" (one table per output row) or "group" (per `group_size` consecutive input
            columns of a row; the last group may be shorter). group_size is ignored per channel.
        filter: ``filter(name, module) -> bool``; False leaves that layer alone (e.g.
            ``lambda name, m: name != "lm_head"`` keeps an output head in float).
        keep_zeros: True: entry 0 of every table is exactly 0 and exactly the zero weights map to it
            (pruned weights stay zero); False: zeros are clustered like any value; "auto": True for a
            layer with at least 1% exact zeros (a pruned layer).
        iters, init: the k-means iterations and initialisation ("linear" over [min, max], as Deep
            Compression; "kmeans++"; "quantile").
        rel_bits: width of Deep Compression's relative indices in the storage report (sparse layers).
    Returns:
        ClusterResult: per-layer tables (float32 [out, groups, 2^bits], values rounded to the weight
        dtype) and uint8 indices [out, in], the skipped layers and the storage report
        (``print(result)``).
    Raises:
        ValueError on a bad argument, a weight holding inf/nan or no layer to cluster; the model is
        then unchanged.
    """
    _check_args(model, bits, method, per, group_size, filter, keep_zeros, iters, init, rel_bits)
    gs = group_size if per == "group" else None
    result = ClusterResult(bits, method, per, gs)
    tied = _tied(model)
    targets = []
    for name, module in model.named_modules():
        if not is_linear_like(module):
            continue
        if filter is not None and not filter(name, module):
            result.skipped[name] = "excluded by filter"
            continue
        others = [n for n in tied.get(id(module.weight), []) if n != f"{name}.weight"]
        if others:
            result.skipped[name] = f"weight tied with {', '.join(others)} (clustering would change it there too)"
            continue
        if not bool(torch.isfinite(module.weight).all()):
            raise ValueError(f"layer {name!r}: weight holds inf or nan")
        targets.append((name, module))
    if not targets:
        raise ValueError("model has no Linear layers to cluster (after filter and tied weights)")

    clustered = []
    for name, module in targets:
        weight = _rows(module).detach()
        zeros = float((weight == 0).float().mean())
        keep = zeros >= AUTO_ZERO_FRACTION if keep_zeros == "auto" else keep_zeros
        table, indices = kmeans_codebook(weight, 1 << bits, gs, iters=iters, keep_zeros=keep, init=init)
        table = table.to(weight.dtype).float()   # what the weight can hold; -> exact packing later
        layer = ClusteredLayer(name, tuple(weight.shape), bits, gs, keep, table, indices, zeros, 0.0)
        new = layer.dequantized()
        ref = weight.float().cpu()
        layer.rel_error = float((new - ref).norm() / ref.norm().clamp(min=1e-30))
        _storage(layer, ref, rel_bits)
        clustered.append((module, layer, new))
    for module, layer, new in clustered:   # write only once every layer succeeded
        _write(module, new)
        result.layers[layer.name] = layer
    return result


# ---------------------------------------------------------------------------- trained quantization

def _flat_index(layer: ClusteredLayer) -> torch.Tensor:
    """Index of every weight's table entry in table.reshape(-1): [out * in] int64."""
    rows, cols = layer.shape
    groups, k = layer.table.shape[1], layer.table.shape[2]
    size = cols if layer.group_size is None else layer.group_size
    group = torch.arange(cols) // size
    base = (torch.arange(rows).unsqueeze(1) * groups + group.unsqueeze(0)) * k
    return (base + layer.indices.long()).reshape(-1)


def finetune_centroids(model: nn.Module, result: ClusterResult, batches: Iterable[Any],
                       loss_fn: Callable[[nn.Module, Any], torch.Tensor], lr: float = 1e-3,
                       steps: Optional[int] = None, *, optimizer: str = "adam", cosine: bool = True,
                       train_other: bool = False, on_step: Optional[Callable[[], None]] = None) -> list[float]:
    """Deep Compression's trained quantization: update the shared centroids with gradients.

    Each step: loss = loss_fn(model, batch); backward; the gradient of every clustered weight is
    summed into its table entry (scatter-add over the indices, per layer and row/group); the
    optimizer ("adam" or "sgd", learning rate `lr`, cosine-decayed over the steps when `cosine`)
    updates the tables; the weights are rewritten as tables[indices]. The indices never change, so
    the model stays exactly clustered; entry 0 of a keep_zeros table stays exactly 0.
    train_other=True also trains every other parameter (biases, norms, unclustered layers) with
    the same optimizer; by default they are left as they are.

    Args:
        batches: iterable of batches; ``steps`` None runs one pass, else exactly `steps` steps
            (re-iterating `batches` as often as needed).
    Returns:
        The loss of every step. ``result``'s tables are updated in place.
    Raises:
        ValueError on a bad argument or when `model` no longer holds a clustered layer of `result`.
    """
    if not isinstance(result, ClusterResult):
        raise ValueError(f"result must be the ClusterResult of cluster_weights, got {type(result).__name__}")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be callable (model, batch) -> scalar loss")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be None or an int >= 0, got {steps!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    modules = dict(model.named_modules())
    layers = []
    for name, layer in result.layers.items():
        module = modules.get(name)
        if module is None or not is_linear_like(module) or tuple(_rows(module).shape) != layer.shape:
            raise ValueError(f"model has no Linear layer {name!r} of shape {layer.shape} (was it replaced "
                             "or changed after clustering?)")
        layers.append((module, layer, _flat_index(layer), torch.nn.Parameter(layer.table.clone())))
    if not layers:
        raise ValueError("result holds no clustered layers")

    weights = {id(module.weight) for module, *_ in layers}
    others = [p for p in model.parameters() if id(p) not in weights]
    saved = {id(p): p.requires_grad for p in model.parameters()}
    for p in others:
        p.requires_grad_(train_other and saved[id(p)])
    for module, *_ in layers:
        module.weight.requires_grad_(True)
    params = [table for *_, table in layers] + ([p for p in others if p.requires_grad] if train_other else [])
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)

    def stream():
        if steps is None:
            yield from batches
            return
        done = 0
        while done < steps:
            empty = True
            for batch in batches:
                empty = False
                yield batch
                done += 1
                if done >= steps:
                    return
            if empty:
                return

    total = steps
    if total is None:
        try:
            total = len(batches)  # type: ignore[arg-type]
        except TypeError:
            total = None
    schedule = None
    if cosine and total:
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    training = model.training
    model.train()
    losses = []
    try:
        for batch in stream():
            opt.zero_grad(set_to_none=True)
            for module, *_ in layers:
                module.weight.grad = None
            loss = loss_fn(model, batch)
            loss.backward()
            for module, layer, flat, table in layers:
                grad = module.weight.grad
                g = torch.zeros(table.numel(), dtype=torch.float32)
                if grad is not None:
                    rows = grad.t() if is_hf_conv1d(module) else grad
                    g.index_add_(0, flat, rows.detach().float().cpu().reshape(-1))
                g = g.view_as(table)
                if layer.keep_zeros:
                    g[..., 0] = 0
                table.grad = g
            opt.step()
            if schedule is not None:
                schedule.step()
            with torch.no_grad():
                for module, layer, flat, table in layers:
                    if layer.keep_zeros:
                        table[..., 0] = 0
                    # round to the weight dtype so tables and weights agree exactly
                    table.copy_(table.to(module.weight.dtype).float())
                    layer.table = table.detach().clone()
                    _write(module, layer.dequantized())
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step()
    finally:
        for p in model.parameters():
            p.requires_grad_(saved.get(id(p), p.requires_grad))
            if not train_other:
                p.grad = None
        for module, *_ in layers:
            module.weight.grad = None
        model.train(training)
    return losses
