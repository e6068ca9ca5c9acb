"""What our ops are timed against, by name (a registry entry lists its own in ``baselines``).

Each builder takes the dense weight the packed one came from and returns a Baseline, or None where
it cannot run here (e.g. onnxruntime not installed); ``Baseline.bind(x)`` gives the thunk to time,
``Baseline.replicate()`` the same baseline over a distinct copy of its weight (cold timing rotates
through such copies, see streaming.py) and ``Baseline.nbytes`` the weight bytes one call reads.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

# After its runs, ONNX Runtime's pool threads spin (its fastest setting, kept) and would steal the
# cores from whatever is timed next on a 2-core machine; this pause lets them go idle first.
ORT_SETTLE_S = 0.05


DESCRIBE = {
    "dense": "torch.nn.functional.linear, dense, in the weight's dtype",
    "torch_dynamic_int8": "torch.ao quantize_dynamic qint8 Linear (fp32 activations)",
    "ort_int8": "onnxruntime quantize_dynamic(QInt8) MatMul, CPUExecutionProvider (sessions share one "
                "process-wide intra-op thread pool, so that cold timing can rotate through copies)",
    "torch_sparse_csr": "torch CSR tensor matmul (cuSPARSE on CUDA)",
    "torch_semi_structured": "torch.sparse.to_sparse_semi_structured (2:4)",
    "int8_w8a8": "sparseinfer int8, per channel, act=dynamic (W8A8: our own 8-bit format)",
    "int8_weight_only": "sparseinfer int8, per channel, act=none (weight-only: our own 8-bit format)",
}


@dataclass
class Baseline:
    name: str
    bind: Callable[[torch.Tensor], Callable[[], object]]  # x -> thunk
    settle_s: float = 0.0  # sleep after its timed turn
    nbytes: int = 0        # weight bytes one call reads (0: unknown, no bytes ceiling, no copies)
    replicate: Optional[Callable[[], "Baseline"]] = None  # same baseline, weight in new memory


def _int8_bytes(weight: torch.Tensor) -> int:
    """int8 weights plus a 4-byte per-output-row term (scales / column offsets)."""
    return weight.numel() + 4 * weight.shape[0]


def dense(weight: torch.Tensor, threads: int) -> Baseline:
    return Baseline("dense", lambda x: (lambda: F.linear(x, weight)), nbytes=weight.numel() * weight.element_size(),
                    replicate=lambda: dense(weight.clone(), threads))


def torch_dynamic_linear(weight: torch.Tensor) -> torch.nn.Module:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.float().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                      dtype=torch.qint8)


def torch_dynamic_int8(weight: torch.Tensor, threads: int) -> Baseline:
    module = torch_dynamic_linear(weight)  # quantizes a clone: every call packs new memory
    return Baseline("torch_dynamic_int8", lambda x: (lambda: module(x)), nbytes=_int8_bytes(weight),
                    replicate=lambda: torch_dynamic_int8(weight, threads))


def ort_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# ORT sessions each start their own intra-op pool by default; N copies of a session rotated call
# by call would leave N-1 pools spinning on the cores. Ours share one process-wide pool (set once
# per process: its thread count is fixed by the first ORT baseline built).
_ORT_POOL: dict = {}


def _ort_global_pool(threads: int) -> bool:
    """Whether the process-wide ORT pool runs `threads` threads (created here if none exists)."""
    from onnxruntime.capi import _pybind_state
    if "threads" not in _ORT_POOL:
        try:
            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _ORT_POOL["threads"] = threads
        except Exception:  # created before, by someone else: its size is unknown
            _ORT_POOL["threads"] = None
    return _ORT_POOL["threads"] == threads


def ort_int8_model(weight: torch.Tensor) -> Optional[bytes]:
    """The serialized ONNX model computing x @ weight.T with dynamic int8 quantization
    (onnxruntime quantize_dynamic, QInt8 weights); None if onnxruntime is absent."""
    if not ort_available():
        return None
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    out_f, in_f = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", in_f])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", out_f])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.float().T.numpy()), "W")])
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # its "consider pre-processing" advice
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        with open(int8, "rb") as f:
            return f.read()


def ort_session(model: bytes, threads: int):
    """An ONNX Runtime CPU session of `model` on the shared pool (per-session threads where the
    shared pool cannot be used); None where neither runs `threads` threads."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state
    options = ort.SessionOptions()
    if hasattr(_pybind_state, "set_global_thread_pool_sizes"):
        if not _ort_global_pool(threads):
            warnings.warn(f"ort_int8 left out: ONNX Runtime's shared thread pool was created with "
                          f"{_ORT_POOL['threads']} threads in this process, not {threads}")
            return None
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def ort_dynamic_matmul(weight: torch.Tensor, threads: int) -> Optional[Callable]:
    """An ONNX Runtime session computing x @ weight.T with dynamic int8 quantization, as a
    callable on a numpy array; None if onnxruntime is absent."""
    model = ort_int8_model(weight)
    session = None if model is None else ort_session(model, threads)
    return None if session is None else (lambda x: session.run(None, {"x": x}))


def _ort_baseline(model: bytes, weight: torch.Tensor, threads: int) -> Optional[Baseline]:
    session = ort_session(model, threads)  # a session holds (and pre-packs) its own weight copy
    if session is None:
        return None

    def bind(x):
        x_np = x.float().numpy()
        return lambda: session.run(None, {"x": x_np})
    return Baseline("ort_int8", bind, settle_s=ORT_SETTLE_S, nbytes=_int8_bytes(weight),
                    replicate=lambda: _ort_baseline(model, weight, threads))


def ort_int8(weight: torch.Tensor, threads: int) -> Optional[Baseline]:
    model = ort_int8_model(weight)
    return None if model is None else _ort_baseline(model, weight, threads)


def torch_sparse_csr(weight: torch.Tensor, threads: int) -> Optional[Baseline]:
    """torch's CSR matmul (cuSPARSE on CUDA), or None where torch refuses the case."""
    try:
        w = weight.to_sparse_csr()
        w @ torch.zeros(weight.shape[1], 8, dtype=weight.dtype, device=weight.device)
    except (RuntimeError, ValueError, NotImplementedError):
        return None
    nbytes = w.values().numel() * w.element_size() + (w.col_indices().numel() + w.crow_indices().numel()) * 8
    return Baseline("torch_sparse_csr", lambda x: (lambda: w @ x.T), nbytes=nbytes,
                    replicate=lambda: torch_sparse_csr(weight, threads))


def torch_semi_structured(weight: torch.Tensor, threads: int) -> Optional[Baseline]:
    """torch's to_sparse_semi_structured 2:4 path (CUDA), or None where torch refuses the case."""
    try:
        from torch.sparse import to_sparse_semi_structured
        w = to_sparse_semi_structured(weight)
        F.linear(torch.zeros(16, weight.shape[1], dtype=weight.dtype, device=weight.device), w)
    except (RuntimeError, ValueError, NotImplementedError):
        return None
    nbytes = weight.numel() * weight.element_size() // 2 + weight.numel() // 8  # half the values + metadata
    return Baseline("torch_semi_structured", lambda x: (lambda: F.linear(x, w)), nbytes=nbytes,
                    replicate=lambda: torch_semi_structured(weight, threads))


def _ours_int8(act: str):
    def make(weight: torch.Tensor, threads: int) -> Baseline:
        from ..formats import Int8
        from ..ops import int8_linear
        packed = Int8.from_dense(weight.float())
        name = "int8_w8a8" if act == "dynamic" else "int8_weight_only"
        return Baseline(name, lambda x: (lambda: int8_linear(x.float(), packed, act=act)), nbytes=packed.nbytes(),
                        replicate=lambda: make(weight, threads))
    return make


BUILDERS: dict[str, Callable[[torch.Tensor, int], Optional[Baseline]]] = {
    "dense": dense, "torch_dynamic_int8": torch_dynamic_int8, "ort_int8": ort_int8,
    "torch_sparse_csr": torch_sparse_csr, "torch_semi_structured": torch_semi_structured,
    "int8_w8a8": _ours_int8("dynamic"), "int8_weight_only": _ours_int8("none"),
}


def build(names, weight: torch.Tensor, threads: Optional[int] = None) -> dict[str, Baseline]:
    """The named baselines that can run here, built once for `weight`."""
    threads = torch.get_num_threads() if threads is None else threads
    out = {}
    for name in names:
        baseline = BUILDERS[name](weight, threads)
        if baseline is not None:
            out[name] = baseline
    return out
