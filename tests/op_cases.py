"""The one table of op cases that the shared op- and layer-contract tests run (test_op_contract.py,
test_layer_contract.py): one OpCase per registered weight format, keyed by its registry name.

The registry (sparseinfer.registry) knows each format's op, reference, layer, example weights and
option variants; this table adds what only the tests need: how to call the raw custom op and its
dense-weight op (the backward's W, test_autograd.py), the inconsistent raw arguments it must
reject, the oracle its output is checked with, and the layout its state_dict is pinned to.
test_op_contract.py::test_every_registered_format_has_an_op_case fails when a format is
registered without an entry here, so no format escapes the contract tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseinfer import reference, registry
from tolerances import FLOOR, assert_linear_close, relative_error


@dataclass(frozen=True)
class RawBad:
    """Raw-op arguments that contradict each other: `change(args)` -> the replaced arguments."""
    id: str
    change: Callable[[dict], dict]
    match: str


@dataclass(frozen=True)
class OpCase:
    name: str                                # the registry name
    raw_op: Any                              # torch.ops.sparseinfer.<op> (the CPU custom op)
    raw_args: Callable[..., dict]            # (weight, x, bias, **op_options) -> {arg name: value}, in order
    raw_bad: tuple[RawBad, ...]              # format-specific raw arguments the op must reject
    dense_op: Any                            # torch.ops.sparseinfer.<op>_dense (the backward's W)
    dense_args: Callable[[Any], tuple]       # weight -> the dense op's arguments
    check: Callable[..., None]               # (y, x, weight, bias, **op_options): y is the op's answer
    dense_reference: Callable[[dict], bool]  # op options under which spec.reference is x @ weight.to_dense().T
    state_keys: frozenset                    # the weight's state_dict keys (its checkpoint layout)
    repr_fragments: Callable[[nn.Module], list]  # what the layer's repr must show
    sparsity: float = 0.0                    # of the example weights
    packs: tuple[dict, ...] = ({},)          # from_dense options opcheck also runs (CSR: bitmask or not)

    @property
    def spec(self) -> registry.WeightFormat:
        return registry.get(self.name)

    def op_options(self, variant: dict) -> dict:
        return self.spec.op_kwargs(variant)

    def pack_options(self, variant: dict) -> dict:
        return {k: v for k, v in variant.items() if k not in self.spec.op_options}

    def example(self, rows: int, cols: int, dtype=torch.float32, seed: int = 0, **pack):
        """(dense, packed) from the registry's example; `pack` options re-pack the dense weight."""
        dense, weight = self.spec.example(rows, cols, self.sparsity, dtype, seed)
        if pack:
            weight = self.spec.format_cls.from_dense(dense, **pack)
        return dense, weight

    def linear(self, in_features: int, out_features: int, seed: int = 0) -> nn.Linear:
        """An nn.Linear (with bias) holding the registry's example weight (2:4: already 2:4)."""
        dense, _ = self.example(out_features, in_features, seed=seed)
        lin = nn.Linear(in_features, out_features)
        with torch.no_grad():
            lin.weight.copy_(dense)
        return lin

    def call_raw(self, args: dict) -> torch.Tensor:
        return self.raw_op(*args.values())


# ---------------------------------------------------------------------------------- oracles
def _close_to_dense(y, x, weight, bias=None):
    """Sparse formats store their weights exactly: the tolerance table against x @ W.T."""
    assert_linear_close(y, x, weight.to_dense(), bias)


def _int8_check(y, x, weight, bias=None, act="dynamic"):
    """W8A8 is bit-exact to the reference; weight-only is within the tolerance table of the
    float64 product with the dequantized weight."""
    if act == "dynamic":
        assert torch.equal(y, reference.int8_linear(x, weight, bias))
        return
    exact = reference.int8_linear(x.double(), weight, None if bias is None else bias.double(), act="none")
    assert y.dtype == x.dtype and y.shape == exact.shape
    torch_err = relative_error(F.linear(x, weight.to_dense(), bias), exact)
    assert relative_error(y, exact) <= 2 * torch_err + FLOOR[x.dtype]


def _lut4_check(y, x, weight, bias=None, act="dynamic"):
    """W4A8: the reference's integer dot products with fp32 sums in another order (a few ulps of
    the output's scale). Weight-only: the tolerance table against the float64 product."""
    if act == "dynamic":
        exact = reference.lut4_linear(x, weight, bias)
        assert y.dtype == x.dtype and y.shape == exact.shape
        finite = torch.isfinite(exact)
        assert torch.equal(finite, torch.isfinite(y))
        bound = 1e-5 + 2 * FLOOR[x.dtype] if x.dtype != torch.float32 else 1e-5
        if x.dtype != torch.float32:  # the output's own rounding, twice
            bound = 2 * float(torch.finfo(x.dtype).eps)
        assert relative_error(y[finite].float(), exact[finite].double()) <= bound
        return
    exact = reference.lut4_linear(x.double(), weight, None if bias is None else bias.double(), act="none")
    assert y.dtype == x.dtype and y.shape == exact.shape
    torch_err = relative_error(F.linear(x, weight.to_dense(), bias), exact)
    assert relative_error(y, exact) <= 2 * torch_err + FLOOR[x.dtype]


def _sparse_int8_check(y, x, weight, bias=None, act="dynamic"):
    """W8A8 is bit-exact to the reference (int8_linear's epilogue); weight-only is within the
    tolerance table of the float64 product with the dequantized weight."""
    if act == "dynamic":
        assert torch.equal(y, reference.sparse_int8_linear(x, weight, bias))
        return
    exact = reference.sparse_int8_linear(x.double(), weight, None if bias is None else bias.double(), act="none")
    assert y.dtype == x.dtype and y.shape == exact.shape
    torch_err = relative_error(F.linear(x, weight.to_dense().to(x.dtype), bias), exact)
    assert relative_error(y, exact) <= 2 * torch_err + FLOOR[x.dtype]


def _replace(args: dict, **changes) -> dict:
    return {**args, **changes}


# ---------------------------------------------------------------------------------- raw ops
def _csr_raw_args(csr, x, bias):
    p = csr.packed
    return dict(x=x, values=p.values, local_idx=p.local_idx, counts=p.counts, block_offsets=p.block_offsets,
                block_nnz_prefix=p.block_nnz_prefix, bitmask=p.bitmask, bias=bias, rows=csr.rows, cols=csr.cols)


def _sparse24_raw_args(s24, x, bias):
    return dict(x=x, values=s24.packed.values, meta=s24.packed.meta, bias=bias, rows=s24.rows, cols=s24.cols)


def _int8_raw_args(q, x, bias, act="dynamic"):
    p = q.packed
    return dict(x=x, qweight=p.qweight, wsum=p.wsum, scales=p.scales, bias=bias, rows=q.rows, cols=q.cols,
                group_size=q.group_size or 0, act=act)


def _lut4_raw_args(w, x, bias, act="dynamic"):
    p = w.packed
    return dict(x=x, nibbles=p.nibbles, scales=p.scales, zeros=p.zeros, offsets=p.offsets, levels=p.levels, table=p.table,
                bias=bias, rows=w.rows, cols=w.cols, group_size=w.group_size or 0, act=act)


def _lut4_dense_args(w):
    p = w.packed
    return (p.nibbles, p.scales, p.zeros, p.offsets, p.levels, p.table, w.rows, w.cols, w.group_size or 0)


_LUT4_RAW_BAD = (
    RawBad("nibbles", lambda a: _replace(a, nibbles=a["nibbles"][:, :0].contiguous()), "nibbles must have shape"),
    RawBad("scales_dtype", lambda a: _replace(a, scales=a["scales"].double()), "scales dtype"),
    RawBad("group_size", lambda a: _replace(a, group_size=48), "group_size"),
    RawBad("act", lambda a: _replace(a, act="int4"), "act must be"),
    RawBad("cols", lambda a: _replace(a, cols=140000), "cols <= 131072"),
)


def _sparse_int8_raw_args(w, x, bias, act="dynamic"):
    p = w.packed
    return dict(x=x, values=p.values, idx=p.idx, counts=p.counts, step_wp=p.step_wp, pair_steps=p.pair_steps,
                scales=p.scales, bias=bias, rows=w.rows, cols=w.cols, group_size=w.group_size or 0,
                uniform=p.uniform, act=act)


def _sparse_int8_dense_args(w):
    p = w.packed
    return (p.values, p.idx, p.counts, p.step_wp, p.pair_steps, p.scales, w.rows, w.cols, w.group_size or 0, p.uniform)


_SPARSE_INT8_RAW_BAD = (
    RawBad("counts_over", lambda a: _replace(a, counts=torch.full_like(a["counts"], 3)), "counts"),
    RawBad("pair_steps", lambda a: _replace(a, pair_steps=a["pair_steps"] + 1), "pair_steps"),
    RawBad("values_short", lambda a: _replace(a, values=a["values"][:-1].contiguous()), "idx: must be|values"),
    RawBad("scales_dtype", lambda a: _replace(a, scales=a["scales"].double()), "scales"),
    RawBad("group_size", lambda a: _replace(a, group_size=48), "group_size"),
    RawBad("act", lambda a: _replace(a, act="int4"), "act must be"),
    RawBad("cols", lambda a: _replace(a, cols=140000), "cols <= 131072"),
)


def _csr_dense_args(csr):
    p = csr.packed
    return (p.values, p.local_idx, p.counts, p.block_offsets, p.block_nnz_prefix, csr.rows, csr.cols)


def _int8_dense_args(q):
    p = q.packed
    return (p.qweight, p.wsum, p.scales, q.rows, q.cols, q.group_size or 0)


# raw arguments every op rejects (x [3, cols] and no bias in the arguments they change)
COMMON_RAW_BAD = (
    RawBad("x_cols", lambda a: _replace(a, x=torch.randn(3, a["cols"] - 1)), "x must be"),
    RawBad("bias_rows", lambda a: _replace(a, bias=torch.randn(a["rows"] - 1)), "bias must have shape"),
)


CASES: dict[str, OpCase] = {case.name: case for case in (
    OpCase(
        name="csr", raw_op=torch.ops.sparseinfer.csr_linear, raw_args=_csr_raw_args,
        dense_op=torch.ops.sparseinfer.csr_dense, dense_args=_csr_dense_args,
        raw_bad=(
            RawBad("counts", lambda a: _replace(a, counts=a["counts"][:, :5].contiguous()), "counts"),
            RawBad("values", lambda a: _replace(a, values=a["values"][:-20].contiguous()), "values"),
        ),
        check=_close_to_dense, dense_reference=lambda options: True,
        state_keys=frozenset({"shape", "compressed", "bitmask", "row_offsets"}),  # sparse-bitmask
        repr_fragments=lambda layer: [f"sparsity={layer.sparsity:.3f}"],
        sparsity=0.7, packs=({"bitmask": True}, {"bitmask": False})),
    OpCase(
        name="2:4", raw_op=torch.ops.sparseinfer.sparse24_linear, raw_args=_sparse24_raw_args,
        dense_op=torch.ops.sparseinfer.sparse24_dense,
        dense_args=lambda s24: (s24.packed.values, s24.packed.meta, s24.rows, s24.cols),
        raw_bad=(
            RawBad("values", lambda a: _replace(a, values=a["values"][:4].contiguous()), "values must have shape"),
            RawBad("meta_shape", lambda a: _replace(a, meta=a["meta"][:, :2].contiguous()), "meta must have shape"),
            RawBad("meta_dtype", lambda a: _replace(a, meta=a["meta"].to(torch.int64)), "meta dtype"),
        ),
        check=_close_to_dense, dense_reference=lambda options: True,
        state_keys=frozenset({"shape", "compressed", "bitmask"}),  # sparse-24-bitmask
        repr_fragments=lambda layer: ["sparsity=0.500"],
        sparsity=0.5),
    OpCase(
        name="int8", raw_op=torch.ops.sparseinfer.int8_linear, raw_args=_int8_raw_args,
        dense_op=torch.ops.sparseinfer.int8_dense, dense_args=_int8_dense_args,
        raw_bad=(
            RawBad("qweight", lambda a: _replace(a, qweight=a["qweight"][:, :8].contiguous()),
                   "qweight must have shape"),
            RawBad("wsum", lambda a: _replace(a, group_size=32), "wsum must have shape"),
            RawBad("scales_dtype", lambda a: _replace(a, scales=a["scales"].double()), "scales dtype"),
            RawBad("group_size", lambda a: _replace(a, group_size=48), "group_size"),
            RawBad("act", lambda a: _replace(a, act="int4"), "act must be"),
            RawBad("cols", lambda a: _replace(a, cols=70000), "cols <= 65536"),
        ),
        check=_int8_check,
        # dynamic quantizes x: only weight-only is a plain product with the dequantized weight
        dense_reference=lambda options: options.get("act") == "none",
        state_keys=frozenset({"weight", "weight_scale"}),  # int-quantized
        repr_fragments=lambda layer: [f"act={layer.act}"],
        sparsity=0.0, packs=({"group_size": None}, {"group_size": 64})),
    OpCase(
        name="int4", raw_op=torch.ops.sparseinfer.lut4_linear, raw_args=_lut4_raw_args,
        dense_op=torch.ops.sparseinfer.lut4_dense, dense_args=_lut4_dense_args,
        raw_bad=_LUT4_RAW_BAD + (
            RawBad("levels_alone", lambda a: _replace(a, levels=torch.zeros(a["scales"].shape[0] * 4, a["scales"].shape[1], 16,
                                                                            dtype=torch.uint8)), "together"),
            RawBad("zeros_dtype", lambda a: _replace(a, zeros=a["zeros"].float()), "zeros dtype"),),
        check=_lut4_check, dense_reference=lambda options: options.get("act") == "none",
        state_keys=frozenset({"weight_packed", "weight_scale", "weight_shape", "weight_zero_point"}),  # pack-quantized
        repr_fragments=lambda layer: [f"act={layer.act}"],
        sparsity=0.0, packs=({"group_size": None}, {"group_size": 32, "symmetric": False})),
    OpCase(
        name="codebook", raw_op=torch.ops.sparseinfer.lut4_linear, raw_args=_lut4_raw_args,
        dense_op=torch.ops.sparseinfer.lut4_dense, dense_args=_lut4_dense_args,
        raw_bad=_LUT4_RAW_BAD + (
            RawBad("table_shape", lambda a: _replace(a, table=a["table"][:, :, :8].contiguous()), "table must have shape"),),
        check=_lut4_check, dense_reference=lambda options: options.get("act") == "none",
        state_keys=frozenset({"weight_packed", "weight_codebook", "weight_shape"}),
        repr_fragments=lambda layer: [f"act={layer.act}"],
        sparsity=0.0, packs=({"group_size": None}, {"group_size": 64})),
    OpCase(
        name="csr+int8", raw_op=torch.ops.sparseinfer.sparse_int8_linear, raw_args=_sparse_int8_raw_args,
        dense_op=torch.ops.sparseinfer.sparse_int8_dense, dense_args=_sparse_int8_dense_args,
        raw_bad=_SPARSE_INT8_RAW_BAD, check=_sparse_int8_check,
        dense_reference=lambda options: options.get("act") == "none",
        state_keys=frozenset({"shape", "compressed", "bitmask", "row_offsets", "weight_scale"}),
        repr_fragments=lambda layer: [f"act={layer.act}", f"sparsity={layer.sparsity:.3f}"],
        sparsity=0.7, packs=({"group_size": None}, {"group_size": 64})),
    OpCase(
        name="2:4+int8", raw_op=torch.ops.sparseinfer.sparse_int8_linear, raw_args=_sparse_int8_raw_args,
        dense_op=torch.ops.sparseinfer.sparse_int8_dense, dense_args=_sparse_int8_dense_args,
        raw_bad=_SPARSE_INT8_RAW_BAD + (
            RawBad("not_uniform", lambda a: _replace(a, uniform=False, counts=a["counts"] * 0), "pair_steps"),),
        check=_sparse_int8_check, dense_reference=lambda options: options.get("act") == "none",
        state_keys=frozenset({"shape", "compressed", "bitmask", "weight_scale"}),
        repr_fragments=lambda layer: [f"act={layer.act}"],
        sparsity=0.5, packs=({"group_size": None}, {"group_size": 32})),
)}


# ---------------------------------------------------------------------------------- parameters
def cases() -> list[OpCase]:
    """The cases of the registered formats, in registry order (a format without an entry is
    reported by test_every_registered_format_has_an_op_case)."""
    return [CASES[name] for name in registry.FORMATS if name in CASES]


def _variant_id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items() if v is not None)


def case_params() -> list:
    """One param per format: (case,)."""
    return [pytest.param(case, id=case.name) for case in cases()]


def variant_params(where: Optional[Callable[[OpCase, dict], bool]] = None) -> list:
    """One param per format and option variant of the registry (int8: act=dynamic, act=none):
    (case, variant). `where(case, variant)` keeps those a check applies to."""
    return [pytest.param(case, variant, id="-".join(filter(None, (case.name, _variant_id(variant)))))
            for case in cases() for variant in case.spec.variants()
            if where is None or where(case, variant)]


def pack_variant_params() -> list:
    """variant_params times the case's extra packings: (case, pack options, variant)."""
    params = []
    for case in cases():
        for variant in case.spec.variants():
            for extra in case.packs:
                pack = {**case.pack_options(variant), **extra}
                name = "-".join(filter(None, (case.name, _variant_id(pack), _variant_id(case.op_options(variant)))))
                params.append(pytest.param(case, pack, variant, id=name))
    return params


def raw_bad_params() -> list:
    """(case, RawBad) for the arguments every raw op rejects and each format's own."""
    return [pytest.param(case, bad, id=f"{case.name}-{bad.id}")
            for case in cases() for bad in COMMON_RAW_BAD + case.raw_bad]
