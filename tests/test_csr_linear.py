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


# ------------------------------------------------- tampered arrays through the raw custom op
# torch.ops.sparseinfer.csr_linear is public (and what torch.compile / autograd call): whatever
# the contents of its tensors, it raises ValueError or computes, never reads out of bounds.
def _raw(csr, x, **changes):
    p = csr.packed
    args = dict(x=x, values=p.values, local_idx=p.local_idx, counts=p.counts.clone(),
                block_offsets=p.block_offsets.clone(), block_nnz_prefix=p.block_nnz_prefix.clone(),
                bitmask=None if p.bitmask is None else p.bitmask.clone(), bias=None,
                rows=csr.rows, cols=csr.cols)
    args.update(changes)
    return args


def _tampered_weight(bitmask):
    w = random_sparse(130, 300, 0.5)  # 3 panels (the last short), 3 row blocks (the last short)
    w[129, 256:] = torch.randn(44)    # the last row of the last block reaches the last panel
    return w, CSR.from_dense(w, bitmask=bitmask)


def _edit(args, name, fn):
    t = args[name]
    fn(t)
    return args


@pytest.mark.parametrize("bitmask", [True, False])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_raw_op_rejects_tampered_layout(isa, bitmask, m):
    w, csr = _tampered_weight(bitmask)
    x = torch.randn(m, 300)
    op = torch.ops.sparseinfer.csr_linear
    y = op(**_raw(csr, x))
    assert_linear_close(y, x, w)
    cases = {
        # the ASan heap-buffer-overflow of issue #23: the last row reads past the values
        "last count up": ("counts", lambda c: c.__setitem__((2, 129), c[2, 129] + 40), "block_offsets"),
        "count over 128": ("counts", lambda c: c.__setitem__((0, 5), 200), "exceeds"),
        "count moved across blocks": ("counts", lambda c: (c.__setitem__((2, 0), c[2, 0] + 1),
                                                           c.__setitem__((2, 129), c[2, 129] - 1)),
                                      "block_offsets"),
        "offset shifted": ("block_offsets", lambda o: o.__setitem__((1, 1), o[1, 1] + 3), "block_offsets"),
        "offset negative": ("block_offsets", lambda o: o.__setitem__((0, 0), -5), "block_offsets"),
        "offset past nnz": ("block_offsets", lambda o: o.__setitem__((2, 3), o[2, 3] + 1000), "block_offsets"),
        "prefix up": ("block_nnz_prefix", lambda p: p.__setitem__(1, p[1] + 1), "block_nnz_prefix"),
        "prefix start": ("block_nnz_prefix", lambda p: p.__setitem__(0, 7), "block_nnz_prefix"),
    }
    for name, (arg, fn, match) in cases.items():
        args = _edit(_raw(csr, x), arg, fn)
        with pytest.raises(ValueError, match=match):
            op(**args)
    if bitmask:  # a mask whose popcount differs from its count: the expand kernels refuse it
        for r, bit in ((0, 0), (129, 2 * 128 + 43), (70, 100)):
            args = _raw(csr, x)
            args["bitmask"][bit // 128, r, (bit % 128) // 8] ^= 1 << (bit % 8)
            if csr.packed.counts[bit // 128, r] == 0:
                continue
            if ops.csr_linear_path(csr, m) == "rows_expand":
                with pytest.raises(ValueError, match="bitmask is inconsistent with counts"):
                    op(**args)
            else:
                assert op(**args).shape == (m, 130)  # the token path never reads the mask


def test_raw_op_proves_a_layout_once_and_again_after_a_change():
    """A proved layout is not re-read on every call (torch.compile / autograd call the raw op on
    every forward), but an in-place change to a proved array is caught on the next call."""
    from sparseinfer.ops import csr as csr_op
    w, csr = _tampered_weight(False)
    x = torch.randn(1, 300)
    args = _raw(csr, x)
    op = torch.ops.sparseinfer.csr_linear
    op(**args)
    assert csr_op._layout_proved(args["counts"], args["block_offsets"], args["block_nnz_prefix"])
    args["counts"][2, 129] += 40  # the out-of-bounds case, on the same (proved) tensor
    assert not csr_op._layout_proved(args["counts"], args["block_offsets"], args["block_nnz_prefix"])
    with pytest.raises(ValueError, match="block_offsets"):
        op(**args)
    fresh = _raw(csr, x)
    fresh["block_offsets"][1, 1] += 3  # a new, never proved array
    with pytest.raises(ValueError, match="block_offsets"):
        op(**fresh)


def test_raw_op_contents_that_only_change_values(isa):
    """Counts moved between rows of one (panel, row block), any u8 index, any mask with the right
    popcount: the layout stays consistent, so the kernels compute (other values), reading only
    inside their buffers."""
    for bitmask in (True, False):
        w, csr = _tampered_weight(bitmask)
        for m in (1, 2, 5, 33):
            x = torch.randn(m, 300)
            args = _raw(csr, x)
            c = args["counts"]
            moved = min(int(c[1, 65]), 128 - int(c[1, 66]))
            c[1, 65] -= moved
            c[1, 66] += moved
            args["local_idx"] = torch.full_like(csr.packed.local_idx, 255)
            if bitmask:
                b = args["bitmask"]
                b[1, 65] = 0
                b[1, 66] = 0
                for rr in (65, 66):  # masks with the new counts' popcounts
                    n = int(c[1, rr])
                    bits = torch.zeros(128, dtype=torch.uint8)
                    bits[torch.randperm(128)[:n]] = 1
                    b[1, rr] = (bits.view(16, 8) << torch.arange(8, dtype=torch.uint8)).sum(-1).to(torch.uint8)
            y = torch.ops.sparseinfer.csr_linear(**args)
            assert y.shape == (m, 130)
