"""The int4 and codebook formats: quantization as compressed-tensors computes it, exact packing
of clustered weights, canonical round trips, sizes and the validation of untrusted arrays."""
import pytest
import torch

from sparseinfer import Codebook, Int4
from sparseinfer.formats import FormatError
from sparseinfer.formats import lut4
from sparseinfer.formats.codebook import exact_codebook


def _fake_quant_4bit(w, group_size, symmetric):
    """compressed-tensors' 4-bit min-max quantization, written out (the formula we follow)."""
    rows, cols = w.shape
    width = cols if group_size is None else group_size
    g = w.reshape(rows, -1, width)
    if symmetric:
        scale = g.abs().amax(-1) / 7.5
        zero = torch.zeros_like(scale)
    else:
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        scale = (hi - lo) / 15
        zero = (-8 - torch.round(lo / scale)).clamp(-8, 7)
    q = (torch.round(g / scale.unsqueeze(-1)) + zero.unsqueeze(-1)).clamp(-8, 7)
    return ((q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(rows, cols)


@pytest.mark.parametrize("group_size", [None, 32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_quantizes_like_compressed_tensors(group_size, symmetric):
    w = torch.randn(12, 256)
    q = Int4.from_dense(w, group_size, symmetric)
    torch.testing.assert_close(q.to_dense(), _fake_quant_4bit(w, group_size, symmetric), rtol=0, atol=1e-6)
    assert q.symmetric == symmetric and q.bits == 4
    assert q.qweight().min() >= -8 and q.qweight().max() <= 7


def test_int4_canonical_round_trip_and_validate():
    for w in (Int4.from_dense(torch.randn(9, 100), 32, False), Int4.from_dense(torch.randn(5, 70), None)):
        w.validate()
        back = Int4.from_canonical(w.to_canonical())
        assert back.group_size == w.group_size
        assert torch.equal(back.to_dense(), w.to_dense())
        assert torch.equal(back.packed.nibbles, w.packed.nibbles)


def test_int4_sizes():
    w = Int4.from_dense(torch.randn(64, 4096), 128)
    index_bytes = 64 * 4096 // 2
    assert index_bytes < w.nbytes() <= index_bytes * 1.08  # + an fp32 scale and a uint8 zero per 128 weights
    assert w.dense_nbytes() == 64 * 4096 * 4


def test_int4_bf16_scales_are_model_dtype():
    w = Int4.from_dense(torch.randn(8, 64).bfloat16(), 32)
    assert w.dtype == torch.bfloat16
    assert torch.equal(w.scale().bfloat16().float(), w.scale())


@pytest.mark.parametrize("group_size", [None, 64])
def test_codebook_packs_clustered_weights_exactly(group_size):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(7, 3 if group_size else 1, 16, generator=g)
    idx = torch.randint(0, 16, (7, 150), generator=g)
    col_group = torch.arange(150) // (group_size or 150)
    w = table[torch.arange(7).unsqueeze(1), col_group, idx]
    c = Codebook.from_dense(w, group_size)
    assert torch.equal(c.to_dense(), w)
    c.validate()
    back = Codebook.from_canonical(c.to_canonical())
    assert torch.equal(back.to_dense(), w)


def test_exact_codebook_refuses_seventeen_values():
    assert exact_codebook(torch.arange(17.0).unsqueeze(0)) is None
    table, idx = exact_codebook(torch.tensor([[3.0, -1.0, 3.0, 0.5]]))
    assert torch.equal(table[0, idx[0].long()], torch.tensor([3.0, -1.0, 3.0, 0.5]))


def test_codebook_levels_are_a_7_bit_grid():
    table = torch.randn(5, 2, 16)
    levels, scale, offset = lut4.codebook_levels(table)
    assert int(levels.max()) <= 127
    approx = scale.unsqueeze(-1) * levels.float() - offset.unsqueeze(-1)
    assert bool(((approx - table).abs() <= scale.unsqueeze(-1) / 2 + 1e-6).all())


def test_index_packing_round_trips():
    idx = torch.randint(0, 16, (13, 201), dtype=torch.uint8)
    assert torch.equal(lut4.unpack_indices(lut4.pack_indices(idx), 13, 201), idx)
    assert torch.equal(lut4.indices_from_words(lut4.words_from_indices(idx), 201), idx)


@pytest.mark.parametrize("make,match", [
    (lambda: Int4.from_quantized(torch.full((2, 8), 9, dtype=torch.int8), torch.ones(2)), "values must lie"),
    (lambda: Int4.from_quantized(torch.zeros(2, 8, dtype=torch.int8), torch.tensor([1.0, float("nan")])), "finite"),
    (lambda: Int4.from_quantized(torch.zeros(2, 8, dtype=torch.int8), torch.ones(3)), "shape must be"),
    (lambda: Int4.from_quantized(torch.zeros(2, 8, dtype=torch.int8), torch.ones(2), torch.full((2, 1), 8)),
     "weight_zero_point"),
    (lambda: Int4.from_quantized(torch.zeros(2, 8), torch.ones(2)), "int8"),
    (lambda: Codebook.from_indices(torch.full((2, 8), 16, dtype=torch.uint8), torch.zeros(2, 1, 16)), "values must lie"),
    (lambda: Codebook.from_indices(torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 1, 8)), "shape must be"),
    (lambda: Codebook.from_indices(torch.zeros(2, 8, dtype=torch.uint8), torch.full((2, 1, 16), float("inf"))), "finite"),
    (lambda: Int4.from_canonical({"weight_packed": torch.zeros(2, 3, dtype=torch.int32), "weight_scale": torch.ones(2),
                                  "weight_shape": torch.tensor([2, 8])}), "weight_packed"),
    (lambda: Codebook.from_canonical({"weight_packed": torch.zeros(2, 1, dtype=torch.int32),
                                      "weight_codebook": torch.zeros(2, 1, 16), "weight_shape": torch.tensor([2, -8])}),
     "shape"),
])
def test_untrusted_arrays_are_refused(make, match):
    with pytest.raises(FormatError, match=match):
        make()


def test_bad_pack_options():
    with pytest.raises(ValueError, match="group_size"):
        Int4.from_dense(torch.randn(4, 64), 48)
    with pytest.raises(ValueError, match="symmetric"):
        Int4.from_dense(torch.randn(4, 64), 32, symmetric="yes")
    with pytest.raises(ValueError, match="finite"):
        Codebook.from_dense(torch.tensor([[float("nan"), 1.0]]))
