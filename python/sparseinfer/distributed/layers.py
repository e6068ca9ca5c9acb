"""The parallel modules: a shard of a Linear (any registered format, or nn.Linear) or of an
Embedding, and the torch.distributed collective that joins the ranks' outputs. The shard itself
(``.local``) is an ordinary layer that runs on its own kernels."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _bias_param(bias: Optional[torch.Tensor]) -> Optional[nn.Parameter]:
    return None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)


class _Parallel(nn.Module):
    def __init__(self, group, rank: int, world: int, start: int, stop: int):
        super().__init__()
        self.group, self.rank, self.world = group, int(rank), int(world)
        self.start, self.stop = int(start), int(stop)

    def _extra(self) -> str:
        return f"rank={self.rank}, world={self.world}, shard=[{self.start}, {self.stop})"


class ColumnParallelLinear(_Parallel):
    """Output features [start, stop) of a Linear (its bias slice included). gather=False: the
    output stays split (feeds this rank's heads or a RowParallelLinear); gather=True: all-gathered
    along the last dim into the full `total` features (uneven shards are zero padded in transit)."""

    def __init__(self, local: nn.Module, in_features: int, total: int, start: int, stop: int, group,
                 rank: int, world: int, gather: bool = False, chunk: Optional[int] = None):
        super().__init__(group, rank, world, start, stop)
        self.local = local
        self.gather = bool(gather)
        self.total = int(total)
        self.chunk = int(chunk if chunk is not None else stop - start)
        self.in_features = int(in_features)
        self.out_features = self.total if gather else stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        if not self.gather or self.world == 1:
            return y
        if y.shape[-1] != self.chunk:  # all_gather takes equal sizes
            y = F.pad(y, (0, self.chunk - y.shape[-1]))
        parts = [torch.empty_like(y) for _ in range(self.world)]
        dist.all_gather(parts, y.contiguous(), group=self.group)
        out = torch.cat(parts, dim=-1)
        return out if out.shape[-1] == self.total else out[..., : self.total].contiguous()

    def extra_repr(self) -> str:
        return f"{self._extra()}, gather={self.gather}"


class RowParallelLinear(_Parallel):
    """Input features [start, stop) of a Linear: y = all_reduce(x_local @ W_local.T) + bias, the
    bias (whole) added once, after the sum."""

    def __init__(self, local: nn.Module, bias: Optional[torch.Tensor], in_total: int, start: int, stop: int,
                 group, rank: int, world: int):
        super().__init__(group, rank, world, start, stop)
        if getattr(local, "bias", None) is not None:
            raise ValueError("the local shard of a row-parallel layer must have no bias (it is added once)")
        self.local = local
        self.bias = _bias_param(bias)
        self.in_total = int(in_total)
        self.in_features = stop - start
        self.out_features = int(getattr(local, "out_features", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        if self.world > 1:
            y = y.contiguous()
            dist.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self._extra()}, bias={self.bias is not None}"


class VocabParallelEmbedding(_Parallel):
    """Rows [start, stop) of an embedding table: each rank looks up the tokens it holds (zeros for
    the others) and one all-reduce sums them."""

    def __init__(self, weight: torch.Tensor, num_embeddings: int, start: int, stop: int, group, rank: int,
                 world: int):
        super().__init__(group, rank, world, start, stop)
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(weight.shape[-1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        inside = (ids >= self.start) & (ids < self.stop)
        if self.stop > self.start:
            out = F.embedding(torch.where(inside, ids - self.start, torch.zeros_like(ids)), self.weight)
            out = out * inside.unsqueeze(-1).to(out.dtype)
        else:
            out = self.weight.new_zeros(*ids.shape, self.embedding_dim)
        if self.world > 1:
            dist.all_reduce(out, group=self.group)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._extra()}"
