"""Small models and checkpoints the checkpoint tests share, and guards that keep a regression
on hostile checkpoints from exhausting memory or hanging the suite."""
import contextlib
import json
import os
import resource
import subprocess
import sys

import torch
from torch import nn

import sparseinfer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sparseinfer.compress import prune_2_4


def read_config(directory) -> dict:
    """A checkpoint directory's config.json."""
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def stored_keys(directory) -> dict:
    """{name: (dtype string, shape)} of the tensors in a checkpoint's model.safetensors."""
    with safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


def edit_tensors(directory, edit) -> None:
    """Rewrite a checkpoint's model.safetensors after edit(tensors dict) (hostile-input tests)."""
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


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


EXTRA_ADDRESS_SPACE = 2 * 2**30


@contextlib.contextmanager
def memory_cap(extra=EXTRA_ADDRESS_SPACE):
    """Cap this process's address space at its current size + `extra` for the block, so a
    regression that reads /dev/zero or allocates from a config dimension fails fast with
    MemoryError instead of exhausting the machine."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = current + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_UNBLOCK = """
import os, sys, time
time.sleep(float(sys.argv[2]))
while True:
    try:
        os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader waiting (ENXIO), or gone
        pass
    time.sleep(1)
"""


@contextlib.contextmanager
def fifo_unblocker(path, after=5.0):
    """Should a reader block on the FIFO at `path`, open it for writing after `after` seconds and
    close it (the reader then sees EOF), so a regression fails instead of hanging. A separate
    process: a reader stuck in native code (safetensors) may hold the GIL."""
    helper = subprocess.Popen([sys.executable, "-c", _UNBLOCK, str(path), str(after)])
    try:
        yield
    finally:
        helper.kill()
        helper.wait()
