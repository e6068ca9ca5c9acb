"""Small models and checkpoints the checkpoint tests share."""
import torch
from torch import nn

import sparseinfer
from sparseinfer.compress import prune_2_4


def mlp(dtype=torch.float32) -> nn.Sequential:
    """Three Linear layers (the last without bias) with awkward widths."""
    return nn.Sequential(nn.Linear(72, 130), nn.ReLU(), nn.Linear(130, 64), nn.GELU(),
                         nn.Linear(64, 24, bias=False)).to(dtype)


def pruned_mlp(fmt: str, dtype=torch.float32, sparsity: float = 0.8) -> nn.Sequential:
    """An mlp whose Linear weights are pruned for `fmt` ('csr': unstructured, '2:4', or dense)."""
    model = mlp(dtype)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                w = layer.weight
                if fmt == "csr":
                    w[torch.rand(w.shape) < sparsity] = 0
                elif fmt == "2:4":
                    w.copy_(prune_2_4(w.float()).to(dtype))
    return model


def compressed_mlp(fmt: str, dtype=torch.float32, **options) -> nn.Sequential:
    """pruned_mlp(fmt) with its layers swapped for ours by sparsify."""
    model = pruned_mlp(fmt, dtype).eval()
    report = sparseinfer.sparsify(model, fmt, **options)
    assert len(report.converted) == 3
    return model
