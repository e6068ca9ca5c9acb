"""Sparse24: packing, unpacking, the compressed-tensors bitmask layout and untrusted data."""
import numpy as np
import pytest
import torch

from sparseinfer import Sparse24
from sparseinfer.formats import FormatError
from sparseinfer.formats.sparse24 import kept_per_row
from sparseinfer.benchmarks.weight_bytes import bytes_read_at
from conftest import random_2_4

SHAPES = [(0, 8), (1, 1), (1, 2), (3, 5), (2, 6), (7, 7), (5, 32), (9, 33), (70, 300)]


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip(rows, cols, dtype):
    w = random_2_4(rows, cols, dtype, extra_zeros=0.3)
    s24 = Sparse24.from_dense(w)
    s24.validate()
    assert s24.shape == (rows, cols) and s24.dtype == dtype
    assert torch.equal(s24.to_dense(), w)
    assert s24.nnz == int((w != 0).sum())
    compressed, bitmask, shape = s24.to_bitmask()
    assert compressed.shape == (rows, kept_per_row(cols)) and compressed.dtype == dtype
    assert bitmask.shape == (rows, -(-cols // 8)) and bitmask.dtype == torch.uint8
    assert shape.tolist() == [[rows], [cols]]
    again = Sparse24.from_bitmask(compressed, bitmask, shape)
    again.validate()
    assert torch.equal(again.to_dense(), w)
    assert torch.equal(again.packed.meta, s24.packed.meta)
    assert torch.equal(again.packed.values, s24.packed.values)


def test_bitmask_layout_matches_documented_format():
    """compressed-tensors sparse-24-bitmask: bit c % 8 of byte c // 8 (numpy little bit order),
    exactly 2 bits per group of 4, values row-major at the set bits."""
    w = random_2_4(6, 40)
    w[0, :4] = torch.tensor([0.0, 0.0, 0.0, 3.0])  # fewer than 2 non-zeros: a zero slot is kept
    compressed, bitmask, _ = Sparse24.from_dense(w).to_bitmask()
    bits = torch.from_numpy(np.unpackbits(bitmask.numpy(), axis=-1, bitorder="little")[:, :40]).bool()
    assert (bits.view(6, 10, 4).sum(-1) == 2).all()
    assert (bits | (w == 0)).all()  # every non-zero has its bit
    assert torch.equal(compressed.flatten(), w[bits])
    repacked = np.packbits(bits.numpy(), axis=-1, bitorder="little")
    assert np.array_equal(repacked, bitmask.numpy())


def test_compressed_tensors_reads_and_writes_the_same_layout():
    sparse_24 = pytest.importorskip(
        "compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask",
        reason="compressed-tensors (<= 0.14, optional) is not installed")
    w = random_2_4(16, 64)
    values, bitmask = sparse_24.sparse24_bitmask_compress(w)
    ours = Sparse24.from_bitmask(values, bitmask, torch.tensor([[16], [64]]))
    assert torch.equal(ours.to_dense(), w)
    compressed, our_bitmask, shape = Sparse24.from_dense(w).to_bitmask()
    assert torch.equal(sparse_24.sparse24_bitmask_decompress(compressed, our_bitmask, [16, 64]), w)


@pytest.mark.parametrize("cols,row,columns,where", [
    (8, 1, slice(4, 8), "row 1, columns 4..7 hold 3 non-zeros"),
    (7, 0, slice(4, 7), "row 0, columns 4..6 hold 3 non-zeros"),  # the partial tail group
])
def test_from_dense_names_first_offending_group(cols, row, columns, where):
    w = random_2_4(3, cols)
    w[row, columns] = torch.tensor([1.0, 1.0, 1.0, 0.0][: columns.stop - columns.start])
    with pytest.raises(ValueError, match="not 2:4 sparse") as info:
        Sparse24.from_dense(w)
    assert where in str(info.value) and "prune_2_4" in str(info.value)


def test_first_violation():
    w = torch.zeros(3, 9)
    assert Sparse24.first_violation(w) is None
    w[1, 8] = 1  # a 1-column tail group may hold its single value
    assert Sparse24.from_dense(w).to_dense()[1, 8] == 1
    w[2, 4:7] = 1
    assert "row 2, columns 4..7 hold 3 non-zeros" in Sparse24.first_violation(w)


@pytest.mark.parametrize("weight,error,match", [
    (torch.randn(4), ValueError, "2-D"),
    (torch.zeros(2, 4, dtype=torch.float64), ValueError, "dtype"),
    (torch.zeros(2, 4, device="meta"), ValueError, "CPU"),
    ([[0.0]], TypeError, "torch.Tensor"),
])
def test_from_dense_bad_input(weight, error, match):
    with pytest.raises(error, match=match):
        Sparse24.from_dense(weight)


def _canonical(rows=4, cols=16):
    return Sparse24.from_dense(random_2_4(rows, cols)).to_bitmask()


def test_from_bitmask_rejects_malformed():
    compressed, bitmask, shape = _canonical()
    cases = [
        ((compressed.double(), bitmask, shape), "compressed: dtype"),
        ((compressed, bitmask.to(torch.int16), shape), "bitmask: dtype must be uint8"),
        ((compressed[:, :-1], bitmask, shape), r"compressed: shape must be \(4, 8\)"),
        ((compressed, bitmask[:3], shape), r"bitmask: shape must be \(4, 2\)"),
        ((compressed, bitmask, [4]), "shape: must be two integers"),
        ((compressed, bitmask, [4, -16]), "shape: must be non-negative"),
        ((compressed, bitmask, "4x16"), "shape: must be two integers"),
        (([0.0], bitmask, shape), "compressed: must be a torch.Tensor"),
    ]
    for args, match in cases:
        with pytest.raises(FormatError, match=match):
            Sparse24.from_bitmask(*args)
    three = bitmask.clone()
    three[2, 1] |= 0xF0  # row 2, columns 12..15: 4 bits
    with pytest.raises(FormatError, match=r"row 2, columns 12..15 have 4 bits set; 2:4 needs exactly 2"):
        Sparse24.from_bitmask(compressed, three, shape)
    one = bitmask.clone()
    one[0, 0] = 0b00000001 | (one[0, 0] & 0xF0)
    with pytest.raises(FormatError, match=r"row 0, columns 0..3 have 1 bits set"):
        Sparse24.from_bitmask(compressed, one, shape)


def test_from_bitmask_rejects_bits_beyond_cols():
    compressed, bitmask, shape = _canonical(2, 6)
    bitmask[1, 0] |= 0b10000000
    with pytest.raises(FormatError, match="row 1 has bits set beyond column 5"):
        Sparse24.from_bitmask(compressed, bitmask, shape)


def test_validate_catches_corruption():
    s24 = Sparse24.from_dense(random_2_4(6, 40))
    s24.packed.meta[0, 0, 1, 0] = 0  # both slots of every group point at column 0
    with pytest.raises(FormatError, match="distinct columns"):
        s24.validate()
    s24 = Sparse24.from_dense(random_2_4(6, 40))
    s24.packed.values[1, -1, 1, -1] = 1.0  # row 5, a slot of columns 60..63 (beyond 40)
    with pytest.raises(FormatError, match="beyond the last column"):
        s24.validate()
    s24 = Sparse24.from_dense(random_2_4(6, 40))
    s24.packed.values[1, 0, 3, 0] = 5.0  # padding row 7 of the last quad
    with pytest.raises(FormatError, match="padding the last quad"):
        s24.validate()


def test_sizes_and_cast():
    w = random_2_4(64, 4096)
    s24 = Sparse24.from_dense(w)
    assert s24.dense_nbytes() == 64 * 4096 * 4
    assert s24.nbytes() == 64 * 2048 * 4 + 64 * 128 * 4  # values + 1 bit per weight
    assert bytes_read_at(s24, 1) == s24.nbytes()
    assert s24.sparsity == pytest.approx(0.5)
    half = s24.to(torch.bfloat16)
    half.validate()
    assert half.dtype == torch.bfloat16 and torch.equal(half.to_dense(), w.to(torch.bfloat16))
    with pytest.raises(ValueError, match="dtype"):
        s24.to(torch.int8)
    assert "Sparse24(shape=(64, 4096)" in repr(s24)
