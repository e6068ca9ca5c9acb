"""pytest-benchmark: sparseinfer.load of Llama-decoder-shaped checkpoints (dense, 90% sparse CSR,
int8) against safetensors.torch.load_file of the dense weights, all in the same run.
Run: pytest bench/test_checkpoint_bench.py --benchmark-only. Default shape is a quarter-width
Llama (1024/2752) so CI stays quick; SPARSEINFER_BENCH_LLAMA7B=1 times the real Llama-7B shape
(4096/11008, two layers), as `sparseinfer bench-load` does by default.
"""
import os

import pytest
import torch
from safetensors.torch import load_file

import sparseinfer
from sparseinfer.benchmarks.checkpoint_load import decoder_layers, write_checkpoints

LAYERS, DTYPE = 2, torch.bfloat16
HIDDEN, INTERMEDIATE = (4096, 11008) if os.environ.get("SPARSEINFER_BENCH_LLAMA7B") else (1024, 2752)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_checkpoints(str(tmp_path_factory.mktemp("load")), LAYERS, HIDDEN, INTERMEDIATE, 0.9, DTYPE)


def test_load_file_dense(benchmark, checkpoints):
    benchmark.group = f"checkpoint load {LAYERS}x{HIDDEN}/{INTERMEDIATE}"
    tensors = benchmark(load_file, os.path.join(checkpoints["dense"], "model.safetensors"))
    assert len(tensors) == LAYERS * 9


@pytest.mark.parametrize("name", ["dense", "csr", "int8"])
def test_sparseinfer_load(benchmark, checkpoints, name):
    benchmark.group = f"checkpoint load {LAYERS}x{HIDDEN}/{INTERMEDIATE}"
    model = benchmark(lambda: sparseinfer.load(checkpoints[name], decoder_layers(LAYERS, HIDDEN, INTERMEDIATE, DTYPE)))
    layer = {"dense": torch.nn.Linear, "csr": sparseinfer.CSRLinear, "int8": sparseinfer.Int8Linear}[name]
    assert type(model.layers[1].mlp.down_proj) is layer
