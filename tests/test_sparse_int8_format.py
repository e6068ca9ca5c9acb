"""Formats csr+int8 (CsrInt8) and 2:4+int8 (Sparse24Int8): quantization of the kept values,
validation of untrusted arrays (from_quantized, from_canonical), the canonical round trip, the
views, and the "window lanes" layout (formats/sparse_int8_layout.py): pack / unpack, the byte
placement, and the proof the custom op runs before its kernels touch a tampered layout."""
import numpy as np
import pytest
import torch

from sparseinfer import Int8, ops
from sparseinfer.compress import prune_2_4
from sparseinfer.formats import CsrInt8, FormatError, Sparse24Int8
from sparseinfer.formats import sparse_int8_layout as layout
from sparseinfer.formats.sparse_int8 import MAX_COLS

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GROUPS = [None, 32, 64, 128]
CLASSES = [CsrInt8, Sparse24Int8]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _pruned(cls, rows, cols, seed=0, sparsity=0.6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    if cls is Sparse24Int8:
        return prune_2_4(w)
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    return w


def _expanded(scale, group_size, cols):
    """[rows, groups] -> [rows, cols]: each column's scale."""
    return scale.expand(-1, cols) if group_size is None else scale.repeat_interleave(group_size, 1)[:, :cols]


# ---------------------------------------------------------------- from_dense
@pytest.mark.parametrize("group_size", GROUPS, ids=lambda g: f"g{g}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_dense_quantizes_kept_values_like_int8(cls, dtype, group_size):
    """Same scales and int8 values as the dense int8 format; pruned weights stay exact zeros."""
    w = _pruned(cls, 9, 250, seed=1).to(dtype)   # 250: not a multiple of any group size
    q = cls.from_dense(w, group_size)
    dense_int8 = Int8.from_dense(w, group_size)
    assert q.dtype == dtype and q.group_size == group_size and q.shape == (9, 250)
    assert torch.equal(q.qweight(), dense_int8.qweight())
    assert torch.equal(q.scale(), dense_int8.scale())
    assert bool((q.qweight()[w == 0] == 0).all())
    assert q.nnz == int((q.qweight() != 0).sum()) and q.sparsity == pytest.approx(1 - q.nnz / (9 * 250))
    dequant = q.to_dense()
    assert dequant.dtype == torch.float32
    assert torch.equal(dequant, q.qweight().float() * _expanded(q.scale(), group_size, 250))
    kept = q.qweight() != 0
    err = (dequant - w.float()).abs()[kept]
    assert bool((err <= _expanded(q.scale(), group_size, 250)[kept] / 2 * (1 + 1e-6)).all())


def test_kept_values_that_round_to_zero_are_dropped():
    w = torch.tensor([[100.0, 0.1, 0.0, -40.0]])  # 0.1 * 127 / 100 rounds to 0
    q = CsrInt8.from_dense(w)
    assert q.qweight().tolist() == [[127, 0, 0, -51]] and q.nnz == 2
    assert q.packed.values.count_nonzero() == 2


def test_scale_is_rounded_to_the_weight_dtype():
    w = torch.tensor([[1.0, 0.0, 0.3, -0.7]], dtype=torch.bfloat16)
    q = CsrInt8.from_dense(w)
    expect = torch.tensor(1.0 / 127).to(torch.bfloat16).float()
    assert torch.equal(q.scale(), expect.reshape(1, 1))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_dense_rejects_bad_weights(cls):
    with pytest.raises(ValueError, match="NaN or an inf"):
        cls.from_dense(torch.tensor([[float("nan"), 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="group_size must be"):
        cls.from_dense(torch.zeros(2, 64), 48)
    with pytest.raises(ValueError, match="2-D"):
        cls.from_dense(torch.zeros(8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        cls.from_dense([[1.0, 0.0]])


def test_sparse24_from_dense_rejects_three_of_four():
    w = prune_2_4(torch.randn(3, 12))
    w[2, 4:7] = 1.0
    with pytest.raises(FormatError, match="row 2, columns 4..7 hold more than 2") as info:
        Sparse24Int8.from_dense(w)
    assert info.value.array == "weight"
    tail = torch.zeros(1, 6)
    tail[0, 4:6] = 1.0  # a short last group of 2 columns may hold 2
    assert Sparse24Int8.from_dense(tail).nnz == 2


# ---------------------------------------------------------------- from_quantized (untrusted)
def _quantized(rows=6, cols=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (rows, cols), generator=g, dtype=torch.int8)
    q[:, 1::2] = 0  # 2:4 as well
    q[0, ::2] = -128
    return q


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_quantized_keeps_the_full_range(cls):
    q = _quantized()
    scale = torch.rand(6, 2, dtype=torch.float16)
    scale[3] = 0
    w = cls.from_quantized(q, scale, 32)
    assert w.dtype == torch.float16 and w.group_size == 32 and w.groups == 2
    assert torch.equal(w.qweight(), q) and torch.equal(w.scale(), scale.float())
    assert cls.from_quantized(q, scale[:, 0], dtype=torch.bfloat16).dtype == torch.bfloat16
    assert cls.from_quantized(q, scale[:, :1]).groups == 1


BAD_QUANTIZED = [
    ("qweight_dtype", lambda q, s: (q.to(torch.int16), s), "qweight", "int8"),
    ("qweight_float", lambda q, s: (q.float(), s), "qweight", "int8"),
    ("qweight_1d", lambda q, s: (q[0], s), "qweight", "2-D"),
    ("qweight_list", lambda q, s: (q.tolist(), s), "qweight", "torch.Tensor"),
    ("scale_rows", lambda q, s: (q, s[:-1]), "scale", "shape must be"),
    ("scale_groups", lambda q, s: (q, torch.ones(6, 3)), "scale", "shape must be"),
    ("scale_nan", lambda q, s: (q, s.index_fill(0, torch.tensor([2]), float("nan"))), "scale", "row 2, group 0 is nan"),
    ("scale_inf", lambda q, s: (q, s.index_fill(0, torch.tensor([1]), float("inf"))), "scale", "finite"),
    ("scale_negative", lambda q, s: (q, -s), "scale", ">= 0"),
    ("scale_int", lambda q, s: (q, s.to(torch.int32)), "scale", "dtype"),
]


@pytest.mark.parametrize("make,array,match", [b[1:] for b in BAD_QUANTIZED], ids=[b[0] for b in BAD_QUANTIZED])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_quantized_rejects_bad_arrays(cls, make, array, match):
    qweight, scale = make(_quantized(), torch.rand(6) + 0.1)
    with pytest.raises(FormatError, match=match) as info:
        cls.from_quantized(qweight, scale)
    assert info.value.array == array and str(info.value).startswith(f"{cls.NAME} {array}:")


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_quantized_rejects_bad_options(cls):
    with pytest.raises(FormatError, match="group_size") as info:
        cls.from_quantized(_quantized(), torch.ones(6), 48)
    assert info.value.array == "group_size"
    with pytest.raises(ValueError, match="dtype must be one of"):
        cls.from_quantized(_quantized(), torch.ones(6), dtype=torch.float64)


def test_sparse24_from_quantized_rejects_three_of_four():
    q = _quantized()
    q[4, 9] = 5  # columns 8..11 of row 4 now hold 3
    with pytest.raises(FormatError, match="row 4, columns 8..11") as info:
        Sparse24Int8.from_quantized(q, torch.ones(6))
    assert info.value.array == "qweight"
    assert CsrInt8.from_quantized(q, torch.ones(6)).nnz == int((q != 0).sum())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_quantized_takes_as_many_cols_as_from_dense(cls):
    cols = 70000
    w = cls.from_dense(_pruned(cls, 2, cols))
    assert torch.equal(cls.from_quantized(w.qweight(), w.scale()).qweight(), w.qweight())
    assert torch.equal(cls.from_canonical(w.to_canonical()).qweight(), w.qweight())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_quantized_rejects_cols_above_max(cls):
    with pytest.raises(ValueError, match="exceeds"):
        cls.from_quantized(torch.zeros(1, MAX_COLS + 1, dtype=torch.int8), torch.ones(1))


# ---------------------------------------------------------------- canonical form
@pytest.mark.parametrize("group_size", GROUPS, ids=lambda g: f"g{g}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_canonical_round_trip_is_exact(cls, dtype, group_size):
    for rows, cols in ((7, 250), (4, 33), (1, 6)):
        dense = _pruned(cls, rows, cols, seed=cols)
        dense[rows // 2] = 0
        w = cls.from_dense(dense.to(dtype), group_size)
        arrays = w.to_canonical()
        assert set(arrays) == set(cls.canonical_keys())
        assert arrays["compressed"].dtype == torch.int8 and arrays["weight_scale"].dtype == dtype
        back = cls.from_canonical(arrays, group_size, dtype=dtype)
        assert (back.shape, back.nnz, back.groups, back.dtype) == (w.shape, w.nnz, w.groups, dtype)
        assert back.group_size == (group_size if w.groups > 1 else None)  # one group: per channel
        assert torch.equal(back.qweight(), w.qweight()) and torch.equal(back.scale(), w.scale())
        for a, b in zip(back.packed.tensors(), w.packed.tensors()):
            assert torch.equal(a, b)
        assert cls.from_canonical(arrays).groups == w.groups  # group size implied by the scale shape


def test_canonical_layouts_mirror_the_float_formats():
    assert CsrInt8.canonical_keys() == ("shape", "compressed", "bitmask", "row_offsets", "weight_scale")
    assert Sparse24Int8.canonical_keys() == ("shape", "compressed", "bitmask", "weight_scale")
    w = CsrInt8.from_quantized(torch.tensor([[0, 3, 0, -128], [5, 0, 0, 0]], dtype=torch.int8), torch.ones(2))
    arrays = w.to_canonical()
    assert arrays["compressed"].tolist() == [3, -128, 5]
    assert arrays["bitmask"].tolist() == [[0b1010], [0b0001]]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_canonical_rejects_bad_arrays(cls):
    arrays = cls.from_dense(_pruned(cls, 4, 40), 32).to_canonical()
    bad = {
        "compressed": dict(arrays, compressed=arrays["compressed"].float()),
        "bitmask": dict(arrays, bitmask=arrays["bitmask"][:, :-1].contiguous()),
        "scale": dict(arrays, weight_scale=torch.full_like(arrays["weight_scale"], float("nan"))),
        "weight_scale": dict(arrays, weight_scale=torch.ones(4, 5)),
    }
    if cls is CsrInt8:
        bad["row_offsets"] = dict(arrays, row_offsets=arrays["row_offsets"] + 1)
    for array, broken in bad.items():
        with pytest.raises(FormatError) as info:
            cls.from_canonical(broken)
        assert info.value.array == array, str(info.value)
    if cls is Sparse24Int8:  # a third bit in one group of 4
        bitmask = arrays["bitmask"].clone()
        bitmask[0, 0] |= 0b0111
        with pytest.raises(FormatError) as info:
            cls.from_canonical(dict(arrays, bitmask=bitmask))
        assert info.value.array in ("bitmask", "compressed")


# ---------------------------------------------------------------- views
def test_views_and_dtype_change():
    w = CsrInt8.from_dense(_pruned(CsrInt8, 5, 100, seed=3), 64)
    assert w.qweight().dtype == torch.int8 and w.qweight().shape == (5, 100)
    assert w.scale().dtype == torch.float32 and w.scale().shape == (5, 2)
    assert w.bits == 8 and w.dense_nbytes() == 5 * 100 * 4
    assert w.nbytes() == sum(t.numel() * t.element_size() for t in w.packed.tensors())
    half = w.to(torch.float16)
    assert half.dtype == torch.float16 and half.packed is w.packed and w.to(torch.float32) is w
    assert half.dense_nbytes() == 5 * 100 * 2
    with pytest.raises(ValueError, match="dtype must be one of"):
        w.to(torch.int8)
    assert "group_size=64" in repr(w) and "sparsity=" in repr(w)
    assert "per channel" in repr(CsrInt8.from_dense(torch.eye(3)))
    w.scale()[0, 0] = 99.0  # a copy
    assert w.scale()[0, 0] != 99.0


# ---------------------------------------------------------------- layout
def _entries(rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (rows, cols), generator=g, dtype=torch.int8)
    q[torch.rand(rows, cols, generator=g) >= density] = 0
    row, col = np.nonzero(q.numpy())
    return q, row.astype(np.int64), col.astype(np.int64), q.numpy()[row, col]


@pytest.mark.parametrize("rows,cols,density", [(1, 1, 1.0), (5, 31, 0.5), (6, 100, 1.0), (9, 250, 0.1), (4, 64, 0.0)])
def test_unpack_returns_the_packed_entries(rows, cols, density):
    q, row, col, value = _entries(rows, cols, density, rows)
    scales = torch.rand(rows, 1)
    p = layout.pack(rows, cols, row, col, value, scales)
    layout.prove(p, rows, cols, 1)
    for got, want in zip(layout.unpack(p, rows, cols), (row, col, value)):
        assert np.array_equal(got, want)
    assert torch.equal(p.scales[:rows], scales) and bool((p.scales[rows:] == 0).all())
    assert p.steps == int(p.counts.sum()) and p.pair_steps[-1] == p.steps


def test_uniform_pack_round_trip_and_limit():
    q = prune_2_4(torch.randn(5, 70)).ne(0).to(torch.int8) * 7
    row, col = np.nonzero(q.numpy())
    p = layout.pack(5, 70, row, col, q.numpy()[row, col], torch.ones(5, 1), uniform=True)
    layout.prove(p, 5, 70, 1)
    assert p.uniform and bool((p.counts == 1).all())
    assert np.array_equal(layout.unpack(p, 5, 70)[1], col)
    row, col = np.zeros(9, np.int64), np.arange(9, dtype=np.int64)  # 9 in one window of one row
    with pytest.raises(ValueError, match="at most 8"):
        layout.pack(1, 16, row, col, np.ones(9, np.int8), torch.ones(1, 1), uniform=True)


def test_byte_placement_follows_the_spec():
    """Row A (0) keeps columns 3, 5 (window 0) and 20 (window 1); row B (1) keeps 0..15 and 17."""
    q = torch.zeros(2, 32, dtype=torch.int8)
    q[0, [3, 5, 20]] = torch.tensor([1, 2, 3], dtype=torch.int8)
    q[1, :16] = torch.arange(10, 26, dtype=torch.int8)
    q[1, 17] = 4
    p = CsrInt8.from_quantized(q, torch.ones(2)).packed
    # window 0: A's 2 in slots 0..7, B's 16 in slots 8..15 of 2 lanes; window 1: A's 1, B's 1.
    assert p.counts.tolist() == [[2]] and p.pair_steps.tolist() == [0, 2]
    assert p.values[0, :16].tolist() == [1, 2] + [0] * 6 + list(range(10, 18))
    assert p.values[1, :16].tolist() == [0] * 8 + list(range(18, 26))
    assert p.values[0, 16:].tolist() == [3] + [0] * 7 + [4] + [0] * 7 and p.values[1, 16:].tolist() == [0] * 16
    assert [v & 15 for v in p.idx[0].tolist()] == [3, 5] + [0] * 6 + list(range(8))
    assert [v & 15 for v in p.idx[1].tolist()] == [0] * 8 + list(range(8, 16))
    assert [v >> 4 for v in p.idx[0].tolist()] == [4] + [0] * 7 + [1] + [0] * 7


def _packed(cls=CsrInt8, rows=6, cols=70, group_size=None):
    return cls.from_dense(_pruned(cls, rows, cols, seed=4, sparsity=0.3), group_size)


def _replace(p, **changes):
    fields = dict(zip(("values", "idx", "counts", "step_wp", "pair_steps", "scales"), p.tensors()), uniform=p.uniform)
    return layout.SparseInt8Packed(**{**fields, **changes})


def _bumped(t, index, delta):
    t = t.clone()
    t.view(-1)[index] += delta
    return t


TAMPERED = [
    ("counts_over_two", lambda p: _replace(p, counts=_bumped(p.counts, 1, 3 - int(p.counts.view(-1)[1]))), "counts"),
    ("counts_plus_one", lambda p: _replace(p, counts=_bumped(p.counts, int((p.counts.view(-1) < 2).nonzero()[0]), 1)),
     "pair_steps"),
    ("pair_steps_not_prefix", lambda p: _replace(p, pair_steps=_bumped(p.pair_steps, 1, 1)), "pair_steps"),
    ("pair_steps_short", lambda p: _replace(p, pair_steps=p.pair_steps[:-1].contiguous()), "pair_steps"),
    ("counts_shape", lambda p: _replace(p, counts=p.counts[:, :-1].contiguous()), "counts"),
    ("counts_dtype", lambda p: _replace(p, counts=p.counts.to(torch.int32)), "counts"),
    ("values_short", lambda p: _replace(p, values=p.values[:-1].contiguous()), "idx|values|pair_steps"),
    ("idx_width", lambda p: _replace(p, idx=p.idx[:, :8].contiguous()), "idx"),
    ("scales_groups", lambda p: _replace(p, scales=torch.zeros(p.scales.shape[0], 2)), "scales"),
    ("scales_rows", lambda p: _replace(p, scales=p.scales[:-2].contiguous()), "scales"),
    ("values_not_contiguous", lambda p: _replace(p, values=torch.cat([p.values, p.values], 1)[:, ::2]), "values"),
    ("uniform_claimed", lambda p: _replace(p, uniform=True), "uniform"),
]


@pytest.mark.parametrize("tamper,match", [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED])
def test_prove_rejects_tampered_layouts(tamper, match):
    w = _packed()
    layout.prove(w.packed, w.rows, w.cols, 1)
    with pytest.raises(ValueError, match=match):
        layout.prove(tamper(w.packed), w.rows, w.cols, 1)


def test_prove_rejects_a_uniform_layout_that_is_not():
    w = _packed(Sparse24Int8)
    layout.prove(w.packed, w.rows, w.cols, 1)
    counts = w.packed.counts.clone()  # 2 steps in one cell, 0 in the next: sums still agree
    counts[0, 0], counts[0, 1] = 2, 0
    with pytest.raises(ValueError, match="uniform|step_wp"):
        layout.prove(_replace(w.packed, counts=counts), w.rows, w.cols, 1)
    with pytest.raises(ValueError, match="scales"):  # wrong rows / group count for the shape
        layout.prove(w.packed, w.rows, w.cols, 3)


def _raw(w, x, **changes):
    p = w.packed
    args = dict(x=x, values=p.values, idx=p.idx, counts=p.counts, step_wp=p.step_wp, pair_steps=p.pair_steps, scales=p.scales,
                bias=None, rows=w.rows, cols=w.cols, group_size=w.group_size or 0, uniform=p.uniform, act="dynamic")
    args.update(changes)
    return torch.ops.sparseinfer.sparse_int8_linear(*args.values())


@pytest.mark.parametrize("tamper,match", [t[1:] for t in TAMPERED], ids=[t[0] for t in TAMPERED])
def test_custom_op_rejects_tampered_layouts(tamper, match):
    w = _packed()
    x = torch.randn(3, w.cols)
    assert torch.equal(_raw(w, x), ops.sparse_int8_linear(x, w))
    bad = tamper(w.packed)
    fields = dict(zip(("values", "idx", "counts", "step_wp", "pair_steps", "scales"), bad.tensors()), uniform=bad.uniform)
    with pytest.raises(ValueError, match=match):
        _raw(w, x, **fields)
    with pytest.raises(ValueError, match=match):  # the backward's dense weight
        torch.ops.sparseinfer.sparse_int8_dense(*bad.tensors(), w.rows, w.cols, 0, bad.uniform)


def test_custom_op_reproves_a_layout_mutated_in_place():
    """The op proves a layout once, then trusts it until one of its tensors changes."""
    w = _packed()
    x = torch.randn(2, w.cols)
    p = _replace(w.packed, counts=w.packed.counts.clone(), pair_steps=w.packed.pair_steps.clone())
    fields = dict(counts=p.counts, pair_steps=p.pair_steps)
    y = _raw(w, x, **fields)
    assert torch.equal(_raw(w, x, **fields), y)  # unchanged tensors: the same answer
    p.counts[0, 0] = 3
    with pytest.raises(ValueError, match="counts"):
        _raw(w, x, **fields)
    p.counts[0, 0] = w.packed.counts[0, 0]
    p.pair_steps[1] += 1
    with pytest.raises(ValueError, match="pair_steps"):
        _raw(w, x, **fields)
    with pytest.raises(ValueError, match="counts"):
        _raw(w, x, rows=w.rows + 2)
    with pytest.raises(ValueError, match="uniform"):
        _raw(w, x, uniform=True)


def test_validate_catches_in_place_tampering():
    w = _packed(Sparse24Int8)
    w.validate()
    w.packed.counts[0, 0] = 2
    with pytest.raises(ValueError, match="uniform|pair_steps"):
        w.validate()
