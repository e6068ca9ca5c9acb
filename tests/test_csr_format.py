"""CSR format: packing, canonical arrays, and validation of untrusted data."""
import pytest
import torch

import sparseinfer
from sparseinfer import CSR
from sparseinfer.formats.csr_cpu import BITMASK_MIN_DENSITY, BITMASK_MIN_DENSITY_AVX2, bitmask_min_density
from sparseinfer.formats import FormatError
from sparseinfer.benchmarks.weight_bytes import bytes_read_at
from conftest import random_sparse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (70, 300), (130, 1), (0, 4), (4, 0)])
@pytest.mark.parametrize("bitmask", [True, False])
def test_round_trip(dtype, shape, bitmask):
    w = random_sparse(*shape, 0.6, dtype)
    csr = CSR.from_dense(w, bitmask=bitmask)
    assert csr.shape == shape and csr.dtype == dtype and csr.has_bitmask == bitmask
    assert csr.nnz == int((w != 0).sum())
    assert torch.equal(csr.to_dense(), w)
    indptr, indices, values = csr.to_csr_arrays()
    ref = w.to_sparse_csr()
    assert torch.equal(indptr, ref.crow_indices())
    assert torch.equal(indices.to(torch.int64), ref.col_indices())
    assert torch.equal(values, ref.values())
    again = CSR.from_csr(indptr, indices, values, shape, bitmask=bitmask)
    again.validate()
    assert torch.equal(again.to_dense(), w)


def test_index_width_and_sparsity():
    assert CSR.from_dense(torch.eye(4)).index_dtype() == torch.uint16
    assert CSR.from_dense(torch.zeros(2, 65536)).index_dtype() == torch.uint16
    assert CSR.from_dense(torch.zeros(2, 65537)).index_dtype() == torch.int32
    csr = CSR.from_dense(torch.eye(4))
    assert csr.sparsity == pytest.approx(0.75) and "sparsity=0.750" in repr(csr)


def test_bitmask_auto_follows_density():
    assert CSR.from_dense(random_sparse(64, 256, 0.5)).has_bitmask
    assert not CSR.from_dense(random_sparse(64, 256, 0.95)).has_bitmask


def test_bitmask_crossover_follows_the_packing_tier():
    """The avx2 tier expands from density 0.16 (no fast gather there), the others from 0.35."""
    w = random_sparse(64, 256, 0.75)
    with sparseinfer.cpu_isa("reference"):
        assert bitmask_min_density() == BITMASK_MIN_DENSITY
        assert not CSR.from_dense(w).has_bitmask
    if "avx2" in sparseinfer.runtime.build_info()["supported_isas"]:
        with sparseinfer.cpu_isa("avx2"):
            assert bitmask_min_density() == BITMASK_MIN_DENSITY_AVX2 < BITMASK_MIN_DENSITY
            assert CSR.from_dense(w).has_bitmask


def test_bytes_accounting():
    w = random_sparse(256, 512, 0.9)
    csr = CSR.from_dense(w)
    assert csr.dense_nbytes() == 256 * 512 * 4
    assert bytes_read_at(csr, 1) < csr.nbytes() < csr.dense_nbytes()
    assert bytes_read_at(csr, 1) >= csr.nnz * 5  # fp32 value + u8 index per non-zero


def test_dtype_cast():
    csr = CSR.from_dense(random_sparse(8, 40, 0.5))
    half = csr.to(torch.float16)
    assert half.dtype == torch.float16 and half.nnz == csr.nnz
    with pytest.raises(ValueError, match="dtype"):
        csr.to(torch.int8)


def test_from_dense_rejects():
    with pytest.raises(ValueError, match="2-D"):
        CSR.from_dense(torch.randn(3))
    with pytest.raises(ValueError, match="dtype"):
        CSR.from_dense(torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(TypeError):
        CSR.from_dense([[1.0]])


def _good():
    w = random_sparse(5, 9, 0.5)
    w[1] = 0
    indptr, indices, values = CSR.from_dense(w).to_csr_arrays()
    return indptr, indices.to(torch.int32), values, (5, 9)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: (a[0][:-1], *a[1:]), "indptr: length"),
    (lambda a: (a[0].float(), *a[1:]), "indptr: dtype"),
    (lambda a: (a[0] + 1, *a[1:]), "indptr: must start at 0"),
    (lambda a: (torch.cat([a[0][:2], a[0][1:2] - 1, a[0][3:]]), *a[1:]), "non-decreasing|last entry"),
    (lambda a: (torch.cat([a[0][:-1], a[0][-1:] + 1]), *a[1:]), "last entry must equal nnz"),
    (lambda a: (a[0], torch.where(torch.arange(len(a[1])) == 2, 9, a[1]).to(torch.int32), *a[2:]), r"indices\[2\] = 9 is outside"),
    (lambda a: (a[0], torch.where(torch.arange(len(a[1])) == 0, -1, a[1]).to(torch.int32), *a[2:]), "is outside"),
    (lambda a: (a[0], a[1].flip(0), *a[2:]), "strictly increasing"),
    (lambda a: (a[0], a[1], a[2][:-1], a[3]), "values: length"),
    (lambda a: (a[0], a[1], a[2].to(torch.int32), a[3]), "values: dtype"),
    (lambda a: (a[0], a[1].float(), *a[2:]), "indices: dtype"),
    (lambda a: (a[0], a[1].view(1, -1), *a[2:]), "indices: must be 1-D"),
    (lambda a: (*a[:3], (5,)), "shape: must be two integers"),
    (lambda a: (*a[:3], (-5, 9)), "shape: must be non-negative"),
    (lambda a: (*a[:3], "ab"), "shape"),
    (lambda a: (a[0].tolist(), *a[1:]), "indptr: must be a torch.Tensor"),
])
def test_malformed_arrays_are_rejected(mutate, match):
    with pytest.raises(FormatError, match=match):
        CSR.from_csr(*mutate(_good()))


def test_duplicate_column_rejected():
    indptr = torch.tensor([0, 2])
    with pytest.raises(FormatError, match="strictly increasing"):
        CSR.from_csr(indptr, torch.tensor([3, 3], dtype=torch.int32), torch.ones(2), (1, 5))


def test_validate_catches_corrupted_packing():
    csr = CSR.from_dense(random_sparse(70, 300, 0.5))
    csr.validate()
    csr.packed.counts[0, 0] += 1
    with pytest.raises(FormatError, match="counts"):
        csr.validate()
    csr = CSR.from_dense(random_sparse(70, 300, 0.5))
    csr.packed.local_idx[3] = 200
    with pytest.raises(FormatError, match="local_idx"):
        csr.validate()
    csr = CSR.from_dense(random_sparse(70, 300, 0.5), bitmask=True)
    csr.packed.bitmask[0, 0, 0] ^= 0xFF
    with pytest.raises(FormatError, match="bitmask"):
        csr.validate()


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (33, 130), (5, 64), (0, 12), (6, 0)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_sparse_bitmask_round_trip(shape, density):
    w = random_sparse(*shape, 1 - density, torch.float32) if density < 1 else torch.randn(shape)
    compressed, bitmask, row_offsets, dims = CSR.from_dense(w).to_bitmask()
    nz = w != 0
    assert torch.equal(compressed, w[nz])                      # row-major values
    assert bitmask.dtype == torch.uint8 and bitmask.shape == (shape[0], -(-shape[1] // 8))
    assert torch.equal(dims, torch.tensor(shape))
    counts = nz.sum(1)
    assert torch.equal(row_offsets, torch.cumsum(counts, 0) - counts)
    # little-endian per row: column c is bit c % 8 of byte c // 8 (numpy packbits, little)
    for r in range(shape[0]):
        for c in range(shape[1]):
            assert bool(int(bitmask[r, c // 8]) >> (c % 8) & 1) == bool(nz[r, c])
    back = CSR.from_bitmask(compressed, bitmask, dims, row_offsets)
    assert torch.equal(back.to_dense(), w)
    assert torch.equal(CSR.from_bitmask(compressed, bitmask, shape).to_dense(), w)  # row_offsets optional


def _bitmask_arrays():
    w = random_sparse(6, 20, 0.6, torch.float32)
    return dict(zip(("compressed", "bitmask", "row_offsets", "shape"), CSR.from_dense(w).to_bitmask()))


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update(shape=torch.tensor([6])), "shape"),
    (lambda a: a.update(shape=torch.tensor([-6, 20])), "non-negative"),
    (lambda a: a.update(compressed=a["compressed"][:-1]), "compressed.*bits set"),
    (lambda a: a.update(compressed=a["compressed"].to(torch.int32)), "compressed"),
    (lambda a: a.update(compressed=a["compressed"].view(1, -1)), "compressed"),
    (lambda a: a.update(bitmask=a["bitmask"][:, :2]), "bitmask.*shape"),
    (lambda a: a.update(bitmask=a["bitmask"].to(torch.int8)), "bitmask"),
    (lambda a: a.update(bitmask=a["bitmask"].clone().index_fill_(1, torch.tensor([2]), 255)), "beyond column 19"),
    (lambda a: a.update(row_offsets=a["row_offsets"].flip(0)), r"row_offsets\[0\]"),
    (lambda a: a.update(row_offsets=a["row_offsets"][:-1]), "row_offsets.*shape"),
    (lambda a: a.update(row_offsets=a["row_offsets"].float()), "row_offsets"),
    (lambda a: a.update(bitmask=[1, 2]), "bitmask.*torch.Tensor"),
])
def test_malformed_bitmask_is_rejected(mutate, match):
    arrays = _bitmask_arrays()
    mutate(arrays)
    with pytest.raises(FormatError, match=match):
        CSR.from_bitmask(arrays["compressed"], arrays["bitmask"], arrays["shape"], arrays["row_offsets"])


@pytest.mark.parametrize("sparsity", [0.0, 0.6, 0.97])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 129), (65, 300), (130, 256), (3, 0), (0, 5)])
def test_one_pass_bitmask_packer_matches_the_sorting_packer(rows, cols, dtype, sparsity):
    """from_dense / from_bitmask pack natively in one pass; from_csr sorts triples: same layout."""
    w = random_sparse(rows, cols, sparsity, dtype)
    fast = CSR.from_dense(w)
    indptr, indices, values = fast.to_csr_arrays()
    slow = CSR.from_csr(indptr, indices, values, (rows, cols))
    for field in ("values", "local_idx", "counts", "block_offsets", "block_nnz_prefix", "bitmask"):
        a, b = getattr(fast._p, field), getattr(slow._p, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    compressed, bitmask, row_offsets, shape = fast.to_bitmask()
    assert torch.equal(CSR.from_bitmask(compressed, bitmask, shape, row_offsets).to_dense(), w)
