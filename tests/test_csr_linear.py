"""csr_linear against the reference over every ISA tier, dtype, path and awkward shape. The contract
every op keeps (bad input, leading dims, threads, opcheck, ...) is in test_op_contract.py."""
import pytest
import torch

import sparseinfer
from sparseinfer import CSR, ops
from conftest import random_sparse
from tolerances import assert_linear_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
M_VALUES = [0, 1, 2, 3, 7, 16, 17, 64, 129]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bitmask", [True, False])
@pytest.mark.parametrize("m", M_VALUES)
def test_matches_reference(isa, dtype, bitmask, m):
    w = random_sparse(70, 300, 0.6, dtype)  # 300 = 2 full panels + 44; 70 rows = 1 block + 6
    bias = torch.randn(70).to(dtype)
    csr = CSR.from_dense(w, bitmask=bitmask)
    x = torch.randn(m, 300).to(dtype)
    assert_linear_close(ops.csr_linear(x, csr, bias), x, w, bias)
    assert_linear_close(ops.csr_linear(x, csr), x, w)


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 3), (130, 129), (64, 128), (200, 1000)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
def test_shapes_and_sparsities(isa, rows, cols, sparsity):
    w = random_sparse(rows, cols, sparsity)
    csr = CSR.from_dense(w)
    for m in (1, 3, 17):
        x = torch.randn(m, cols)
        assert_linear_close(ops.csr_linear(x, csr), x, w)


def test_empty_and_full_rows(isa):
    w = random_sparse(96, 260, 0.5)
    w[3] = 0
    w[10] = torch.randn(260)  # fully dense row: 128 per panel exercises the u8 count limit
    w[64:] = 0                # a whole empty row block
    for bitmask in (True, False):
        csr = CSR.from_dense(w, bitmask=bitmask)
        for m in (1, 2, 5, 33):
            x = torch.randn(m, 260)
            y = ops.csr_linear(x, csr)
            assert_linear_close(y, x, w)
            assert torch.all(y[:, 64:] == 0) and torch.all(y[:, 3] == 0)


def test_wide_k_beyond_u16(isa):
    cols = 70_001
    w = random_sparse(9, cols, 0.9)
    w[2, cols - 1] = 1.5  # last column is reachable
    csr = CSR.from_dense(w)
    assert csr.index_dtype() == torch.int32
    for m in (1, 4):
        x = torch.randn(m, cols)
        assert_linear_close(ops.csr_linear(x, csr), x, w)


def test_special_values_stay_local():
    """Padding and masked tails never leak inf/nan into other rows. A row whose stored weights
    touch the inf column is inf; the expand path computes 16 columns densely, so a neighbouring
    row may become nan exactly as dense F.linear would (0 * inf); empty rows stay 0."""
    w = torch.zeros(4, 20)
    w[0, 1] = 1.0
    w[1, 5] = 2.0
    x = torch.ones(2, 20)
    x[:, 5] = float("inf")
    for bitmask in (True, False):
        for isa_name in sparseinfer.build_info()["supported_isas"]:
            with sparseinfer.cpu_isa(isa_name):
                y = ops.csr_linear(x, CSR.from_dense(w, bitmask=bitmask))
                assert torch.isinf(y[:, 1]).all()
                assert bool(((y[:, 0] == 1) | (bitmask & torch.isnan(y[:, 0]))).all())
                assert torch.equal(y[:, 2:], torch.zeros(2, 2))


def test_paths_are_reported():
    dense_ish = CSR.from_dense(random_sparse(8, 8, 0.5), bitmask=True)
    sparse = CSR.from_dense(random_sparse(8, 8, 0.9), bitmask=False)
    assert ops.csr_linear_path(dense_ish, 1) == "rows_expand"
    assert ops.csr_linear_path(sparse, 1) == "rows_gather"
    assert ops.csr_linear_path(sparse, 128) == "tokens"
