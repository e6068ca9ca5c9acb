"""The contract every op keeps, run for every registered format from the one table of op cases
(op_cases.py): argument checks, shapes, threads, the reference, torch.library integration.
Format-specific behaviour (exactness over ISA tiers, paths, special values) lives in the
per-format test files."""
import pytest
import torch

import sparseinfer
from sparseinfer import registry
from op_cases import CASES, case_params, pack_variant_params, raw_bad_params, variant_params

SMALL = (6, 10)  # rows, cols of the weight the bad-input checks use


def test_every_registered_format_has_an_op_case():
    missing = sorted(set(registry.FORMATS) - set(CASES))
    stale = sorted(set(CASES) - set(registry.FORMATS))
    assert not missing, f"registered format(s) {missing} have no OpCase in tests/op_cases.py"
    assert not stale, f"tests/op_cases.py has OpCases for unregistered format(s) {stale}"
    for name, case in CASES.items():
        assert case.spec.op(torch.randn(2, 8), case.example(3, 8)[1]).shape == (2, 3), name


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("case,variant", variant_params())
def test_leading_dims_and_zero_tokens(isa, case, variant):
    options = case.op_options(variant)
    _, weight = case.example(33, 40, **case.pack_options(variant))
    x = torch.randn(2, 3, 5, 40)
    y = case.spec.op(x, weight, **options)
    assert y.shape == (2, 3, 5, 33)
    case.check(y.reshape(-1, 33), x.reshape(-1, 40), weight, **options)
    assert case.spec.op(torch.randn(0, 7, 40), weight, **options).shape == (0, 7, 33)
    assert case.spec.op(torch.randn(40), weight, **options).shape == (33,)


@pytest.mark.parametrize("case,variant", variant_params())
def test_zero_sized_weight(case, variant):
    options, pack = case.op_options(variant), case.pack_options(variant)
    weight = case.spec.format_cls.from_dense(torch.zeros(0, 8), **pack)
    assert case.spec.op(torch.randn(3, 8), weight, **options).shape == (3, 0)
    weight = case.spec.format_cls.from_dense(torch.zeros(4, 0), **pack)
    y = case.spec.op(torch.randn(3, 0), weight, torch.ones(4), **options)
    assert torch.equal(y, torch.ones(3, 4))


@pytest.mark.parametrize("case,variant", variant_params())
@pytest.mark.parametrize("backend", ["openmp", "pool"])
def test_threads_follow_torch(case, variant, backend):
    options = case.op_options(variant)
    _, weight = case.example(512, 512, **case.pack_options(variant))
    before = torch.get_num_threads()
    sparseinfer.set_threading_backend(backend)
    try:
        for n in (3, 2, 1):  # grows, then shrinks: pool threads are made only when the count changes
            torch.set_num_threads(n)
            for m in (1, 64):
                x = torch.randn(m, 512)
                case.check(case.spec.op(x, weight, **options), x, weight, **options)
            if n > 1 and sparseinfer.threading_backend() == "pool":
                assert sparseinfer.build_info()["thread_pool_size"] == n
    finally:
        torch.set_num_threads(before)
        sparseinfer.set_threading_backend("auto")


@pytest.mark.parametrize("case,variant", variant_params(where=lambda case, v: case.dense_reference(v)))
def test_reference_module_matches(case, variant):
    _, weight = case.example(10, 20, **case.pack_options(variant))
    x = torch.randn(4, 20)
    torch.testing.assert_close(case.spec.reference(x, weight, **case.op_options(variant)), x @ weight.to_dense().T)


# ---------------------------------------------------------------- torch.library integration
@pytest.mark.parametrize("case,pack,variant", pack_variant_params())
def test_opcheck(case, pack, variant):
    _, weight = case.example(20, 150, **pack)
    for m, bias in ((1, None), (3, torch.randn(20)), (9, torch.randn(20))):
        args = case.raw_args(weight, torch.randn(m, 150), bias, **case.op_options(variant))
        torch.library.opcheck(case.raw_op.default, tuple(args.values()))


@pytest.mark.parametrize("case,variant", variant_params())
def test_raw_op_matches_public_op(case, variant):
    options = case.op_options(variant)
    _, weight = case.example(20, 150, **case.pack_options(variant))
    x, bias = torch.randn(3, 150), torch.randn(20)
    for b in (None, bias):
        assert torch.equal(case.call_raw(case.raw_args(weight, x, b, **options)),
                           case.spec.op(x, weight, b, **options))


@pytest.mark.parametrize("case,bad", raw_bad_params())
def test_raw_op_rejects_inconsistent_sizes(case, bad):
    _, weight = case.example(20, 150)
    args = case.raw_args(weight, torch.randn(3, 150), None)
    with pytest.raises(ValueError, match=bad.match):
        case.call_raw(bad.change(args))


@pytest.mark.parametrize("case,variant", variant_params())
def test_torch_compile(case, variant):
    options = case.op_options(variant)
    _, weight = case.example(24, 48, **case.pack_options(variant))
    layer = case.spec.layer_cls.from_weight(weight, torch.randn(24), **options)
    x = torch.randn(5, 48)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make_x,match", [
    (lambda: torch.randn(2, 10, dtype=torch.float64), "x dtype must be torch.float32"),
    (lambda: torch.randn(2, 9), r"x must have shape \[\.\.\., 10\]"),
    (lambda: torch.randn(10, 2).T, "x must be contiguous"),
    (lambda: torch.tensor(1.0), r"x must have shape"),
    (lambda: torch.randn(2, 10).to(torch.int32), "x dtype"),
    (lambda: torch.randn(2, 10, device="meta"), "x must be on the CPU"),
    (lambda: [[1.0] * 10], "x must be a torch.Tensor"),
], ids=["float64", "last_dim", "non_contiguous", "0d", "int32", "meta", "list"])
@pytest.mark.parametrize("case", case_params())
def test_bad_x(case, make_x, match):
    _, weight = case.example(*SMALL)
    with pytest.raises(ValueError, match=match):
        case.spec.op(make_x(), weight)


@pytest.mark.parametrize("make_bias,match", [
    (lambda: torch.randn(5), r"bias must have shape \(6,\)"),
    (lambda: torch.randn(6, dtype=torch.float16), "bias dtype"),
    (lambda: torch.randn(12)[::2], "bias must be contiguous"),
    (lambda: torch.randn(1, 6), "bias must have shape"),
], ids=["rows", "float16", "non_contiguous", "2d"])
@pytest.mark.parametrize("case", case_params())
def test_bad_bias(case, make_bias, match):
    _, weight = case.example(*SMALL)
    with pytest.raises(ValueError, match=match):
        case.spec.op(torch.randn(2, 10), weight, make_bias())


@pytest.mark.parametrize("case", case_params())
def test_bad_weight(case):
    with pytest.raises(ValueError, match=f"weight must be a .*sparseinfer.formats.{case.spec.format_cls.__name__}"):
        case.spec.op(torch.randn(2, 10), torch.randn(6, 10))


@pytest.mark.parametrize("case", case_params())
def test_dtype_must_match_weight(case):
    _, weight = case.example(*SMALL, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="x dtype must be torch.bfloat16"):
        case.spec.op(torch.randn(2, 10), weight)
