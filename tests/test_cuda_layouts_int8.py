"""The CUDA layouts of issue #22, checked on the CPU (no GPU, no CUDA extension): the 2:4 + int8
layout for mma.sp m16n8k64 (s8) and the bitmap-tile CSR layout for m16n8k16. Round trips over
awkward shapes, each layout decoded lane by lane by the PTX fragment rules (written out here,
apart from the packers' index tables), the W8A8 reference against the CPU reference (bit-exact),
and untrusted input rejected with a clear exception."""
import dataclasses

import pytest
import torch

from sparseinfer import ops, reference
from sparseinfer.formats import CSR, Int8, Sparse24Int8
from sparseinfer.formats import csr_bitmap_cuda as bitmap
from sparseinfer.formats import sparse24_int8_cuda as s24
from sparseinfer.formats.errors import FormatError

from conftest import random_2_4, random_sparse

SHAPES_24 = [(1, 4), (1, 64), (2, 3), (3, 5), (16, 64), (17, 130), (33, 200), (0, 64), (5, 0)]
SHAPES_CSR = [(1, 1), (1, 64), (7, 3), (64, 64), (65, 130), (100, 200), (0, 5), (5, 0)]


def _int8_24(rows, cols, group_size=None, extra_zeros=0.0):
    return Sparse24Int8.from_dense(random_2_4(rows, cols, extra_zeros=extra_zeros), group_size)


def _padded(t, rows, cols):
    out = torch.zeros(rows, cols, dtype=t.dtype)
    out[: t.shape[0], : t.shape[1]] = t
    return out


# ---------------------------------------------------------------------- 2:4 + int8
def _mma_sp_k64_tile(p, rt, kt):
    """The dense 16x64 int8 A tile mma.sp m16n8k64 (.s8) sees for (row tile, k tile). Register
    byte a_i of lane 4g + t: row g (i % 8 < 4) or g + 8, the (i % 4)-th kept value of columns
    8t (+ 32 for i >= 8) .. + 7. Metadata of lane T: row (T >> 2) + 8 (T & 1), nibble n for the
    group at column 32 ((T >> 1) & 1) + 4n, kept positions in bits 0-1 and 2-3."""
    positions = {}
    for lane in range(32):
        word = int(p.meta[rt, kt, lane]) & 0xFFFFFFFF
        row, base = lane // 4 + 8 * (lane & 1), 32 * ((lane >> 1) & 1)
        for n in range(8):
            nib = (word >> (4 * n)) & 0xF
            assert (nib & 3) < (nib >> 2), "ordered metadata: first position below the second"
            positions[row, base + 4 * n] = (nib & 3, nib >> 2)
    assert len(positions) == 16 * 16  # every (row, group) described exactly once
    tile = torch.zeros(16, 64, dtype=torch.int32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(16):
            row = g + (8 if i % 8 >= 4 else 0)
            group = 8 * t + (32 if i >= 8 else 0) + 4 * ((i % 4) // 2)
            tile[row, group + positions[row, group][i % 2]] += int(p.values[rt, kt, lane, i])
    return tile


@pytest.mark.parametrize("shape", SHAPES_24)
@pytest.mark.parametrize("group_size", [None, 32, 64, 128])
def test_24_int8_round_trip(shape, group_size):
    w = _int8_24(*shape, group_size, extra_zeros=0.3)
    p = s24.from_weight(w)
    s24.validate(p)
    q, scale = s24.unpack(p)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(q, w.qweight()) and torch.equal(scale, w.scale())
    assert p.nbytes() == p.values.numel() + 4 * p.meta.numel() + 4 * p.scales.numel()


@pytest.mark.parametrize("extra_zeros", [0.0, 0.5, 1.0])  # full 2:4, sparser, all zero
def test_24_int8_tiles_decode_by_the_ptx_rules(extra_zeros):
    rows, cols = 21, 130
    w = _int8_24(rows, cols, extra_zeros=extra_zeros)
    p = s24.pack(w.qweight(), w.scale())
    rt, kt = p.values.shape[:2]
    dense = _padded(w.qweight().to(torch.int32), 16 * rt, 64 * kt)
    for r in range(rt):
        for k in range(kt):
            assert torch.equal(_mma_sp_k64_tile(p, r, k), dense[16 * r:16 * r + 16, 64 * k:64 * k + 64])


def test_24_int8_padding_and_empty_groups_keep_positions_0_1():
    q = torch.zeros(3, 70, dtype=torch.int8)
    q[0, 1], q[1, 3], q[2, 64:66] = 5, -7, torch.tensor([1, 2], dtype=torch.int8)
    p = s24.pack(q, torch.ones(3))
    nib = (p.meta.to(torch.int64).unsqueeze(-1) >> (4 * torch.arange(8))) & 0xF
    lane = torch.arange(32)
    row = lane // 4 + 8 * (lane & 1)
    assert bool((nib[0, :, row >= 3] == 0b0100).all())  # padding rows
    assert int(nib[0, 0, 0, 0]) == 0b0100              # row 0: non-zero at 1 -> positions 0, 1
    assert int(nib[0, 0, 4, 0]) == 0b1100              # row 1 (lane 4): non-zero at 3 -> positions 0, 3
    assert int(nib[0, 1, 8, 0]) == 0b0100 and int(nib[0, 1, 8, 1]) == 0b0100  # row 2, columns 64..71
    assert bool((nib[0, 1, row == 0] == 0b0100).all())  # columns 64..127 of row 0: empty / padding
    assert torch.equal(s24.pack(torch.zeros(5, 40, dtype=torch.int8), torch.zeros(5)).meta,
                       torch.full((1, 1, 32), s24.PAD_META, dtype=torch.int32))


@pytest.mark.parametrize("shape,group_size", [((5, 70), 32), ((17, 130), None), ((33, 256), 64),
                                              ((8, 96), 32), ((3, 5), None)])
@pytest.mark.parametrize("m", [0, 1, 7, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_w8a8_is_the_cpu_reference_bit_for_bit(shape, group_size, m, dtype):
    w = _int8_24(*shape, group_size, extra_zeros=0.2).to(dtype)
    x = (3 * torch.randn(m, shape[1])).to(dtype)
    bias = torch.randn(shape[0]).to(dtype)
    qx, sx = reference.quantize_per_token(x)
    p = s24.from_weight(w)
    for b in (None, bias):
        got = s24.reference_w8a8(qx, sx, p, b)
        assert got.dtype == torch.float32 and got.shape == (m, shape[0])
        assert torch.equal(got.to(dtype), reference.sparse_int8_linear(x, w, b))


def test_reference_w8a8_matches_the_native_cpu_op():
    w = _int8_24(40, 200, 32, extra_zeros=0.1)
    x = torch.randn(9, 200)
    qx, sx = reference.quantize_per_token(x)
    bias = torch.randn(40)
    assert torch.equal(s24.reference_w8a8(qx, sx, s24.from_weight(w), bias), ops.sparse_int8_linear(x, w, bias))


def test_reference_w8a8_handles_zero_columns_and_zero_tokens():
    p = s24.pack(torch.zeros(4, 0, dtype=torch.int8), torch.ones(4))
    assert torch.equal(s24.reference_w8a8(torch.zeros(2, 0, dtype=torch.int8), torch.ones(2), p), torch.zeros(2, 4))
    w = _int8_24(6, 64)
    qx, sx = reference.quantize_per_token(torch.zeros(3, 64))  # zero tokens: q = 0, scale 0
    assert torch.equal(s24.reference_w8a8(qx, sx, s24.from_weight(w)), torch.zeros(3, 6))


def test_24_int8_pack_rejects_bad_input():
    q = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(FormatError, match="not 2:4"):
        s24.pack(torch.tensor([[1, 1, 1, 0]], dtype=torch.int8), torch.ones(1))
    bad = [(q.float(), torch.ones(4), None, "qweight"), (q, torch.ones(3), None, "scale"),
           (q, torch.ones(4, 2), None, "scale"), (q, torch.tensor([1.0, -1, 1, 1]), None, "scale"),
           (q, torch.tensor([1.0, float("nan"), 1, 1]), None, "scale"), (q, torch.ones(4, 1), 48, "group_size"),
           ([[0]], torch.ones(1), None, "qweight"), (q[0], torch.ones(4), None, "qweight"),
           (torch.zeros(1, s24.MAX_COLS + 1, dtype=torch.int8), torch.ones(1), None, "qweight")]
    for qweight, scale, group_size, name in bad:
        with pytest.raises(FormatError, match=name):
            s24.pack(qweight, scale, group_size)
    with pytest.raises(TypeError):
        s24.from_weight(Int8.from_dense(torch.randn(4, 8)))


def test_24_int8_validate_rejects_tampered_layouts():
    p = s24.from_weight(_int8_24(17, 70, 32))
    s24.validate(p)

    def tampered(**changes):
        return dataclasses.replace(p, **changes)

    meta = p.meta.clone()
    meta[0, 0, 0] = 0x44444445  # nibble 0b0101: the same position twice
    reversed_meta = p.meta.clone()
    reversed_meta[0, 0, 0] = 0x44444441  # nibble 0b0001: second position below the first
    values = p.values.clone()
    values[1, 0, 31, 15] = 3  # row 31 of tile 1: a padding row
    scales = p.scales.clone()
    scales[0, 0, 0] = -1.0
    pad_scale = p.scales.clone()
    pad_scale[1, 0, 15] = 1.0  # row 31: padding
    cases = [(dict(meta=meta), "meta"), (dict(meta=reversed_meta), "meta"), (dict(values=values), "values"),
             (dict(scales=scales), "scales"), (dict(scales=pad_scale), "scales"),
             (dict(values=p.values[:, :1].clone()), "values"), (dict(meta=p.meta.to(torch.int64)), "meta"),
             (dict(values=p.values.transpose(2, 3)), "values"), (dict(group_size=48), "group_size"),
             (dict(rows=-1), "shape"), (dict(cols=1.5), "shape"), (dict(scales=p.scales[:, :1].clone()), "scales")]
    for changes, name in cases:
        with pytest.raises(FormatError, match=name):
            s24.validate(tampered(**changes))
        with pytest.raises(FormatError, match=name):
            s24.unpack(tampered(**changes))


def test_reference_w8a8_rejects_bad_input():
    p = s24.from_weight(_int8_24(4, 64))
    qx, sx = reference.quantize_per_token(torch.randn(2, 64))
    with pytest.raises(TypeError):
        s24.reference_w8a8(qx.tolist(), sx, p)
    for args in [(qx.float(), sx), (qx[:, :32], sx), (qx.fill_(-128), sx), (qx, sx.double()), (qx, sx[:1])]:
        with pytest.raises(ValueError):
            s24.reference_w8a8(*args, p)
    with pytest.raises(ValueError, match="bias"):
        s24.reference_w8a8(*reference.quantize_per_token(torch.randn(2, 64)), p, torch.zeros(5))


# ---------------------------------------------------------------------- CSR bitmap tiles
def _mma_k16_tile(p, gt, tc, words):
    """The dense 16x16 A tile of TC tile `tc` in group tile `gt` as the kernel's lanes rebuild it.
    Register pair j of lane 4g + t (m16n8k16 A fragment) is row g + 8 (j % 2), columns
    2t + 8 (j // 2) + e; its bits are 8g + 2t + e of bitmap 4 tc + j; its value sits past the
    group tile's offset by the popcounts of the earlier bitmaps and of the bits below."""
    tile = torch.zeros(16, 16, dtype=p.values.dtype)
    for j in range(4):
        word = words[4 * tc + j]
        start = int(p.offsets[gt]) + sum(bin(w).count("1") for w in words[: 4 * tc + j])
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for e in range(2):
                bit = 8 * g + 2 * t + e
                if word >> bit & 1:
                    index = start + bin(word & ((1 << bit) - 1)).count("1")
                    tile[g + 8 * (j % 2), 2 * t + e + 8 * (j // 2)] = p.values[index]
    return tile


def _tile_mix(rows, cols, dtype):
    """A weight with a fully dense group tile, an empty one and random ones."""
    w = random_sparse(rows, cols, 0.7)
    w[:64, :64] = torch.randn(min(rows, 64), min(cols, 64)).clamp(min=0.01)
    w[:64, 64:128] = 0
    return w.to(dtype)


@pytest.mark.parametrize("shape", SHAPES_CSR)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_csr_bitmap_round_trip(shape, sparsity, dtype):
    w = random_sparse(*shape, sparsity, dtype)
    p = bitmap.from_weight(CSR.from_dense(w))
    bitmap.validate(p)
    assert p.values.dtype == dtype and p.bitmaps.dtype == torch.int64 and p.offsets.dtype == torch.int32
    assert torch.equal(bitmap.unpack(p), w)
    bands, tiles = bitmap.grid(*shape)
    assert p.nbytes() == 8 * 64 * bands * tiles + 2 * p.values.numel() + 4 * (bands * tiles + 1)
    assert bool((p.offsets % 8 == 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_csr_bitmap_tiles_decode_by_the_ptx_rules(dtype):
    w = _tile_mix(100, 150, dtype)
    p = bitmap.from_weight(CSR.from_dense(w))
    bands, tiles = bitmap.grid(100, 150)
    dense = _padded(w, 64 * bands, 64 * tiles)
    assert not dense[:64, 64:128].any() and bool((dense[:64, :64] != 0).all())
    for gt in range(bands * tiles):
        words = [int(v) & (2**64 - 1) for v in p.bitmaps[gt]]
        r0, c0 = 64 * (gt // tiles), 64 * (gt % tiles)
        for tc in range(16):
            r, c = r0 + 16 * (tc // 4), c0 + 16 * (tc % 4)
            assert torch.equal(_mma_k16_tile(p, gt, tc, words), dense[r:r + 16, c:c + 16])
    assert int(p.offsets[1]) == 64 * 64 and int(p.offsets[2]) == int(p.offsets[1])  # dense, then empty


def test_csr_bitmap_pack_from_arrays_casts_and_counts_bytes():
    w = random_sparse(128, 128, 0.5)
    indptr, indices, values = CSR.from_dense(w).to_csr_arrays()
    p = bitmap.pack(indptr, indices.to(torch.int32), values, (128, 128), dtype=torch.float16)
    assert torch.equal(bitmap.unpack(p), w.half())
    assert p.nbytes() < 0.6 * 128 * 128 * 2  # about 1.125 of 2 bytes a weight at 50%
    with pytest.raises(ValueError, match="dtype"):
        bitmap.pack(indptr, indices, values, (128, 128))  # fp32 values need dtype=
    with pytest.raises(ValueError, match="dtype"):
        bitmap.pack(indptr, indices, values, (128, 128), dtype=torch.float32)
    with pytest.raises(TypeError):
        bitmap.from_weight(w)


def test_csr_bitmap_pack_rejects_bad_arrays():
    indptr = torch.tensor([0, 2, 3])
    indices = torch.tensor([0, 4, 1], dtype=torch.int32)
    values = torch.ones(3, dtype=torch.float16)
    bitmap.pack(indptr, indices, values, (2, 5))
    cases = [(torch.tensor([0, 3, 2]), indices, values, (2, 5), "indptr"),
             (torch.tensor([1, 2, 3]), indices, values, (2, 5), "indptr"),
             (torch.tensor([0, 2, 4]), indices, values, (2, 5), "indptr"),
             (indptr, torch.tensor([0, 5, 1], dtype=torch.int32), values, (2, 5), "indices"),
             (indptr, torch.tensor([4, 0, 1], dtype=torch.int32), values, (2, 5), "indices"),
             (indptr, torch.tensor([0, -1, 1], dtype=torch.int32), values, (2, 5), "indices"),
             (indptr, indices, torch.ones(3, dtype=torch.int32), (2, 5), "values"),
             (indptr, indices, values[:2], (2, 5), "values"), (indptr, indices, values, (2, -5), "shape"),
             (indptr.float(), indices, values, (2, 5), "indptr"), (indptr, indices, values, "2x5", "shape")]
    for args in cases:
        with pytest.raises(FormatError, match=args[-1]):
            bitmap.pack(*args[:-1])


def test_csr_bitmap_validate_rejects_tampered_layouts():
    p = bitmap.from_weight(CSR.from_dense(random_sparse(70, 80, 0.6, torch.float16)))
    bitmap.validate(p)
    offsets = p.offsets.clone()
    offsets[1] += 8  # a group tile with more slots than set bits, values no longer fitting
    odd = p.offsets.clone()
    odd[1:] += 4  # not multiples of 8
    short = p.offsets.clone()
    short[-1] -= 8
    backwards = p.offsets.clone()
    backwards[1], backwards[2] = backwards[2], backwards[1]
    outside = p.bitmaps.clone()
    outside[3, 63] |= 1 << 63  # group tile 3 = band 1: rows 64.. bit in row 127, col 127: outside
    extra = p.bitmaps.clone()
    extra[0, 0] = -1  # all 64 bits set: more set bits than value slots
    values = p.values.clone()
    pad = int(p.offsets[1]) - 1  # last slot of group tile 0, padding unless its count is a multiple of 8
    values[pad] = 1.0 if values[pad] == 0 else values[pad]
    cases = [(dict(offsets=offsets), "offsets"), (dict(offsets=odd), "offsets"), (dict(offsets=short), "offsets"),
             (dict(offsets=backwards), "offsets"), (dict(bitmaps=outside), "bitmaps"), (dict(bitmaps=extra), "offsets"),
             (dict(bitmaps=p.bitmaps.to(torch.int32)), "bitmaps"), (dict(offsets=p.offsets.long()), "offsets"),
             (dict(values=p.values.float()), "values"), (dict(bitmaps=p.bitmaps[:1].clone()), "bitmaps"),
             (dict(rows=-3), "shape"), (dict(values=p.values[1:].clone()), "offsets")]
    counts = [bin(int(v) & (2**64 - 1)).count("1") for v in p.bitmaps[0]]
    if sum(counts) % 8:
        cases.append((dict(values=values), "values"))
    for changes, name in cases:
        with pytest.raises(FormatError, match=name):
            bitmap.validate(dataclasses.replace(p, **changes))
        with pytest.raises(FormatError, match=name):
            bitmap.unpack(dataclasses.replace(p, **changes))
