"""The CUDA weight layouts, checked on the CPU (no GPU needed): packing round trips, and the
2:4 layout decoded by the mma.sp rules (PTX ISA, confirmed on an H100 by a probe kernel)
written out independently of the packer's index tables."""
import pytest
import torch

from sparseinfer.formats import csr_cuda, sparse24_cuda
from sparseinfer.formats.csr import CSR
from sparseinfer.formats.errors import FormatError
from sparseinfer.formats.sparse24 import Sparse24

from conftest import random_2_4, random_sparse

CPU = torch.device("cpu")


def _mma_sp_tile(values, meta, rt, kt):
    """Dense 16x32 A tile that mma.sp m16n8k32 sees for (row tile, k tile), decoded lane by lane."""
    tile = torch.zeros(16, 32, dtype=torch.float64)
    sel, pair = kt % 2, kt // 2
    positions = {}
    for lane in range(32):
        g, t = lane // 4, lane % 4
        if t // 2 != sel:
            continue  # this k tile's metadata lives in the lanes of sparsity selector `sel`
        word = int(meta[rt, pair, lane]) & 0xFFFFFFFF
        j = t % 2
        for n in range(8):
            row, group = g + 8 * (n // 4), 4 * j + n % 4
            nib = (word >> (4 * n)) & 0xF
            positions[row, group] = (nib & 3, nib >> 2)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for e in range(8):
            row = g + 8 * ((e >> 1) & 1)
            ccol = 2 * t + (e & 1) + 8 * (e >> 2)  # column of the 16-wide compressed tile
            group, which = ccol // 2, ccol % 2
            tile[row, 4 * group + positions[row, group][which]] += float(values[rt, kt, lane, e])
    return tile


@pytest.mark.parametrize("rows,cols", [(1, 4), (16, 32), (17, 40), (5, 70), (33, 130)])
def test_sparse24_cuda_layout_decodes_by_mma_rules(rows, cols):
    w = random_2_4(rows, cols)
    s24 = Sparse24.from_dense(w)
    values, pos = s24._slots()
    p = sparse24_cuda.pack(values, pos, CPU)
    rt, kt = p.values.shape[:2]
    assert kt % 2 == 0 and tuple(p.meta.shape) == (rt, kt // 2, 32)
    dense = torch.zeros(rt * 16, kt * 32, dtype=torch.float64)
    for r in range(rt):
        for k in range(kt):
            dense[16 * r:16 * r + 16, 32 * k:32 * k + 32] = _mma_sp_tile(p.values, p.meta, r, k)
    torch.testing.assert_close(dense[:rows, :cols], w.double())
    assert not dense[rows:].any() and not dense[:, cols:].any()
    words = p.meta.to(torch.int64) & 0xFFFFFFFF
    nibbles = torch.stack([(words >> (4 * n)) & 0xF for n in range(8)])
    assert not bool(torch.isin(nibbles, torch.tensor([0b0000, 0b0101, 0b1010, 0b1111])).any())


@pytest.mark.parametrize("rows,cols", [(3, 8), (40, 96), (17, 200)])
def test_sparse24_cuda_layout_round_trip(rows, cols):
    s24 = Sparse24.from_dense(random_2_4(rows, cols, dtype=torch.bfloat16))
    values, pos = s24._slots()
    p = sparse24_cuda.pack(values, pos, CPU)
    back_values, back_pos = sparse24_cuda.slots(p, rows)
    width = values.shape[1]
    assert torch.equal(back_values[:, :width], values) and torch.equal(back_pos[:, :width], pos)
    torch.testing.assert_close(sparse24_cuda.dense_on_device(p, rows, cols), s24.to_dense())
    sparse24_cuda.validate(p, rows, cols)


@pytest.mark.parametrize("rows,cols,sparsity", [(1, 1, 0.0), (7, 5, 0.5), (33, 2049, 0.7),
                                                (5, 4100, 0.9), (4, 70, 1.0)])
def test_csr_cuda_layout_round_trip(rows, cols, sparsity):
    w = random_sparse(rows, cols, sparsity)
    csr = CSR.from_dense(w)
    row, col, values = csr._triples()
    p = csr_cuda.pack(rows, cols, row, col, values, CPU)
    ptr = p.seg_ptr.to(torch.int64)
    assert bool((ptr % csr_cuda.VEC == 0).all()) and int(ptr[-1]) == p.entries
    torch.testing.assert_close(csr_cuda.dense_on_device(p, rows, cols), w)
    r2, c2, v2 = csr_cuda.cells(p, rows, cols)
    assert torch.equal(r2 * cols + c2, torch.sort(row * cols + col).values)
    csr_cuda.validate(p, rows, cols)


def test_csr_cuda_validate_catches_corruption():
    w = random_sparse(6, 3000, 0.5)
    row, col, values = CSR.from_dense(w)._triples()

    def fresh():
        return csr_cuda.pack(6, 3000, row, col, values, CPU)

    p = fresh()
    p.seg_ptr[3] += 3
    with pytest.raises(FormatError, match="seg_ptr"):
        csr_cuda.validate(p, 6, 3000)
    p = fresh()
    p.seg_ptr[3] += 8  # still well formed ranges, but entries move between rows
    with pytest.raises(FormatError):
        csr_cuda.validate(p, 6, 3000)
    p = fresh()
    p.seg_ptr[-1] += 8
    with pytest.raises(FormatError, match="seg_ptr"):
        csr_cuda.validate(p, 6, 3000)
    p = fresh()
    p.index[0] = 2047 if int(p.index[0]) != 2047 else 2046  # breaks column order or the pattern
    p.index[1] = 0
    with pytest.raises(FormatError, match="index"):
        csr_cuda.validate(p, 6, 3000)
    p = fresh()
    pad = int((p.index == -1).nonzero()[0, 0])
    p.values[pad] = 1.0
    with pytest.raises(FormatError, match="padding"):
        csr_cuda.validate(p, 6, 3000)


def test_moving_to_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="CUDA"):
        CSR.from_dense(random_sparse(4, 8, 0.5)).to("cuda")
