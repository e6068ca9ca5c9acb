"""The vectorised packers (numpy bit packing, byte tables, compaction; issue #17 item 5) give the
same arrays, bit for bit, as the plain-torch algorithms they replaced, kept here as references:
CSR via the sort-based triples packer, 2:4 via top-k slot choice, int8 via the unfused
quantizer; and the canonical (checkpoint) arrays round-trip exactly. Awkward shapes, all float
dtypes, -0.0, NaN, empty and all-zero weights."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from sparseinfer.formats import CSR, Int8, Sparse24
from sparseinfer.formats import csr_cpu, sparse24_cpu
from sparseinfer.formats.bits import pack_bits, popcount, unpack_bits
from sparseinfer.formats.int8 import K_BLOCK, QMAX, ROW_BLOCK
from sparseinfer.formats.n_m import prune_2_4

SHAPES = [(0, 5), (3, 0), (1, 1), (2, 3), (5, 7), (3, 4), (9, 13), (4, 33), (7, 129), (17, 130), (65, 257),
          (33, 1000), (130, 385), (20, 2049)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KINDS = ["sparse", "very_sparse", "neg_zero", "dense", "zero"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor (so -0.0 / NaN payloads compare exactly)."""
    if t.dtype.is_floating_point:
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _same(a, b, what: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    assert torch.equal(_bits(a), _bits(b)), what


def _same_packed(a, b, what: str) -> None:
    assert a.shape == b.shape and a.nnz == b.nnz, what
    for f in dataclasses.fields(a._p):
        _same(getattr(a._p, f.name), getattr(b._p, f.name), f"{what}: {f.name}")


def _weight(rows: int, cols: int, dtype: torch.dtype, kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    drop = torch.rand(rows, cols, generator=g)
    if kind == "sparse":
        w[drop < 0.6] = 0
    elif kind == "very_sparse":
        w[drop < 0.95] = 0
    elif kind == "neg_zero":
        w[drop < 0.5] = -0.0
    elif kind == "zero":
        w.zero_()
    return w.to(dtype)


CASES = list(itertools.product(SHAPES, DTYPES, KINDS))


def _id(case):
    (r, c), dtype, kind = case
    return f"{r}x{c}-{str(dtype)[6:]}-{kind}"


# ---------------------------------------------------------------------------- bits
def _pack_bits_reference(bits: torch.Tensor) -> torch.Tensor:
    width = -(-bits.shape[-1] // 8) * 8
    padded = torch.nn.functional.pad(bits, (0, width - bits.shape[-1]))
    grouped = padded.view(*bits.shape[:-1], width // 8, 8).to(torch.int32)
    return (grouped * (1 << torch.arange(8, dtype=torch.int32))).sum(-1).to(torch.uint8)


@pytest.mark.parametrize("cols", [0, 1, 7, 8, 9, 64, 130])
def test_bits_match_plain_torch(cols):
    bits = torch.rand(5, cols) < 0.5
    packed = pack_bits(bits)
    _same(packed, _pack_bits_reference(bits), "pack_bits")
    _same(unpack_bits(packed, cols), bits, "unpack_bits")
    _same(popcount(packed), bits.sum(-1), "popcount")


# ---------------------------------------------------------------------------- CSR
@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("bitmask", [True, False])
def test_csr_from_dense_matches_triples_packer(case, bitmask):
    (rows, cols), dtype, kind = case
    w = _weight(rows, cols, dtype, kind)
    w[: min(rows, 2), : min(cols, 1)] = float("nan")  # NaN is a non-zero
    csr = CSR.from_dense(w, bitmask=bitmask)
    nonzero = w != 0
    r, c = nonzero.nonzero(as_tuple=True)
    reference = csr_cpu.pack_triples(rows, cols, r, c, w[nonzero], bitmask)
    _same_packed(csr, CSR((rows, cols), int(nonzero.sum()), reference), "from_dense")

    compressed, mask, row_offsets, shape = csr.to_bitmask()
    counts = nonzero.sum(1)
    _same(compressed, w[nonzero], "compressed")
    _same(mask, _pack_bits_reference(nonzero), "bitmask")
    _same(row_offsets, torch.cumsum(counts, 0) - counts, "row_offsets")
    _same(shape, torch.tensor([rows, cols]), "shape")
    again = CSR.from_bitmask(compressed, mask, shape, row_offsets, bitmask_kernel=bitmask)
    _same_packed(again, csr, "from_bitmask(to_bitmask())")


def test_csr_canonical_without_kernel_masks_many_panels():
    w = _weight(300, 1100, torch.float32, "very_sparse", seed=3)  # 9 panels, below the mask density
    csr = CSR.from_dense(w)
    assert not csr.has_bitmask
    _same(csr.to_bitmask()[0], w[w != 0], "compressed")
    _same(csr.to_bitmask()[1], _pack_bits_reference(w != 0), "bitmask")


# ---------------------------------------------------------------------------- 2:4
def _sparse24_reference(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The slot values and meta words the top-k packer chose (row-major [rows, chunks * 16] and
    [rows, chunks])."""
    rows, cols = weight.shape
    width = -(-cols // 32) * 32
    padded = torch.zeros(rows, width, dtype=weight.dtype)
    padded[:, :cols] = weight
    nonzero = torch.zeros(rows, width, dtype=torch.int64)
    nonzero[:, :cols] = (weight != 0).to(torch.int64)
    pos = torch.arange(width) % 4
    score = nonzero * 8 + (torch.arange(width) < cols).to(torch.int64) * 4 + (3 - pos)
    top = score.view(rows, width // 4, 4).topk(2, dim=-1).indices
    kept = torch.zeros(rows, width // 4, 4, dtype=torch.int8).scatter_(-1, top, 1)
    slot_pos = torch.sort(kept, dim=-1, descending=True, stable=True).indices[..., :2]
    values = padded.view(rows, width // 4, 4).gather(-1, slot_pos).reshape(rows, width // 2)
    code = (slot_pos.reshape(rows, width // 32, 16) << (2 * torch.arange(16))).sum(-1)
    meta = torch.where(code >= 2**31, code - 2**32, code).to(torch.int32)
    return values, meta


def _quads_to_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    quads, chunks, _, k = t.shape
    return t.transpose(1, 2).reshape(quads * 4, chunks * k)[:rows]


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sparse24_from_dense_matches_topk_packer(case):
    (rows, cols), dtype, kind = case
    w = prune_2_4(_weight(rows, cols, torch.float32, kind)).to(dtype)
    if kind == "neg_zero":
        w = torch.where(w == 0, torch.tensor(-0.0, dtype=dtype), w)
    s = Sparse24.from_dense(w)
    values, meta = _sparse24_reference(w)
    _same(_quads_to_rows(s._p.values, rows), values, "values")
    _same(_quads_to_rows(s._p.meta, rows), meta, "meta")
    padding = _quads_to_rows(s._p.values, -(-rows // 4) * 4)[rows:]
    assert not bool((padding != 0).any()), "padding rows"
    assert s.nnz == int((w != 0).sum())

    compressed, mask, shape = s.to_bitmask()
    ref_compressed, ref_mask, ref_shape = sparse24_cpu.bitmask_from_slots(*s._slots(), cols)
    _same(compressed, ref_compressed, "compressed")
    _same(mask, ref_mask, "bitmask")
    _same(shape, ref_shape, "shape")
    _same_packed(Sparse24.from_bitmask(compressed, mask, shape), s, "from_bitmask(to_bitmask())")


@pytest.mark.parametrize("cols", [1, 2, 3, 4, 5, 6, 7, 8, 13, 37])
def test_sparse24_first_violation_matches_group_counts(cols):
    g = torch.Generator().manual_seed(cols)
    for trial in range(20):
        w = torch.randn(6, cols, generator=g)
        w[torch.rand(6, cols, generator=g) < trial / 20] = 0
        padded = torch.zeros(6, -(-cols // 4) * 4, dtype=torch.bool)
        padded[:, :cols] = w != 0
        count = padded.view(6, -1, 4).sum(-1)
        bad = (count > 2).nonzero()
        problem = Sparse24.first_violation(w)
        if not bad.numel():
            assert problem is None
            continue
        r, grp = (int(v) for v in bad[0])
        assert problem.startswith(f"row {r}, columns {4 * grp}..{min(cols, 4 * grp + 4) - 1} hold "
                                  f"{int(count[r, grp])} non-zeros")
        assert Sparse24.first_violation_bitmask(_pack_bits_reference(w != 0), cols) == problem


def test_sparse24_from_bitmask_keeps_explicit_zeros_and_negative_zero():
    w = prune_2_4(_weight(9, 37, torch.float32, "dense"))
    compressed, mask, shape = Sparse24.from_dense(w).to_bitmask()
    compressed[0, :3] = torch.tensor([0.0, -0.0, 1.5])  # stored zeros are legal in kept slots
    s = Sparse24.from_bitmask(compressed, mask, shape)
    again = s.to_bitmask()
    _same(again[0], compressed, "compressed")
    _same(again[1], mask, "bitmask")
    assert s.nnz == int((compressed != 0).sum())


# ---------------------------------------------------------------------------- int8
def _int8_reference(weight: torch.Tensor, group_size):
    rows, cols = weight.shape
    groups = 1 if group_size is None else max(1, -(-cols // group_size))
    width = cols if group_size is None else group_size
    w = torch.zeros(rows, groups * width)
    w[:, :cols] = weight.float()
    w = w.view(rows, groups, width)
    scale = (w.abs().amax(-1) / QMAX if w.numel() else torch.zeros(rows, groups)).to(weight.dtype).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / safe.unsqueeze(-1)).clamp_(-QMAX, QMAX).to(torch.int8)
    wsum = q.sum(-1, dtype=torch.int32)
    q = q.reshape(rows, groups * width)[:, :cols]
    rows_p, kp = -(-rows // ROW_BLOCK) * ROW_BLOCK, -(-cols // K_BLOCK) * K_BLOCK
    padded = torch.zeros(rows_p, kp, dtype=torch.int8)
    padded[:rows, :cols] = q
    qweight = padded.view(rows_p // ROW_BLOCK, ROW_BLOCK, kp // 4, 4).transpose(1, 2).contiguous()
    return q, qweight, wsum, scale


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("group_size", [None, 32, 64])
def test_int8_from_dense_matches_plain_quantizer(case, group_size):
    (rows, cols), dtype, kind = case
    w = _weight(rows, cols, dtype, kind)
    q, qweight, wsum, scale = _int8_reference(w, group_size)
    packed = Int8.from_dense(w, group_size)
    _same(packed._p.qweight, qweight, "qweight")
    _same(packed.qweight(), q.contiguous(), "canonical qweight")
    _same(packed.scale(), scale, "scale")
    rows_p = qweight.shape[0] * ROW_BLOCK
    _same(packed._p.wsum.transpose(1, 2).reshape(rows_p, wsum.shape[1])[:rows], wsum, "wsum")
    assert packed.nnz == int((q != 0).sum())
    again = Int8.from_canonical(packed.to_canonical(), group_size)
    _same_packed(again, packed, "from_canonical(to_canonical())")


def test_int8_non_finite_weights_quantize_like_the_plain_quantizer():
    w = torch.randn(20, 70)
    w[0, 3], w[1, 5], w[2, 7] = float("nan"), float("inf"), -float("inf")
    q, qweight, wsum, _ = _int8_reference(w, None)
    packed = Int8.from_dense(w)
    _same(packed._p.qweight, qweight, "qweight")
    _same(packed._p.wsum.transpose(1, 2).reshape(32, -1)[:20], wsum, "wsum")


def test_int8_from_quantized_odd_storage_offset_and_non_contiguous():
    big = torch.randint(-127, 128, (1, 64 * 128 + 1), dtype=torch.int8)
    for q in (big[0, 1:].view(64, 128), torch.randint(-127, 128, (128, 64), dtype=torch.int8).t()):
        packed = Int8.from_quantized(q, torch.rand(64, 1))
        _same(packed.qweight(), q.contiguous(), "qweight round trip")
        _same(packed._p.wsum.transpose(1, 2).reshape(64, -1), q.sum(-1, dtype=torch.int32).unsqueeze(-1), "wsum")


@pytest.mark.parametrize("dtype", DTYPES)
def test_host_count_nonzero_counts_exact_zeros_like_torch(dtype):
    from sparseinfer.formats.host import count_nonzero
    w = _weight(33, 70, torch.float32, "neg_zero")
    w[0, :3] = torch.tensor([float("nan"), float("inf"), 0.0])
    w = w.to(dtype)
    assert count_nonzero(w) == int(torch.count_nonzero(w)) == int((w != 0).sum())
    assert count_nonzero(w.t()) == count_nonzero(w)
