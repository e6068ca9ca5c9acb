"""Shared by the 4-bit lookup checkpoint tests (test_checkpoint_lut4*.py): a small MLP with
compressed layers, config and tensor readers, and a checkpoint with a codebook and an int4 layer."""
import shutil
import warnings

import pytest
import torch
from torch import nn

import sparseinfer
from sparseinfer import CodebookLinear, CSRLinear, Int4Linear, Int8Linear
from sparseinfer.checkpoint import CheckpointError
from sparseinfer.checkpoint.int_packing import pack_int32, pack_int32_dim0, unpack_int32_dim0
from checkpoint_models import mlp, read_config as _config, stored_keys as _keys  # noqa: F401 (re-exported)

X = torch.randn(5, 72, generator=torch.Generator().manual_seed(1))


def _quiet_load(directory, model=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of ours dequantizes or falls back
        return sparseinfer.load(directory, mlp() if model is None else model)


def _compressed(fmt, seed=0, **options):
    torch.manual_seed(seed)
    model = mlp().eval()
    report = sparseinfer.sparsify(model, fmt, **options)
    assert len(report.converted) == 3
    return model


def _assert_same_model(loaded, model):
    for i in (0, 2, 4):
        assert type(loaded[i]) is type(model[i])
        assert loaded[i].act == model[i].act and loaded[i].group_size == model[i].group_size
        assert torch.equal(loaded[i].weight.to_dense(), model[i].weight.to_dense()), i
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))



@pytest.fixture(scope="module")
def codebook_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("codebook")
    torch.manual_seed(0)
    model = mlp().eval()
    sparseinfer.sparsify(model, "codebook", filter=lambda name, m: name == "0", group_size=32)
    sparseinfer.sparsify(model, "int4", filter=lambda name, m: name == "2")
    sparseinfer.save(model, directory)
    return directory
