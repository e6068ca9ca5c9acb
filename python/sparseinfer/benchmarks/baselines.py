"""What our ops are timed against, by name (a registry entry lists its own in ``baselines``).

Each builder takes the dense weight the packed one came from and returns a Baseline, or None where
it cannot run here (e.g. onnxruntime not installed); ``Baseline.bind(x)`` gives the thunk to time.
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
    "ort_int8": "onnxruntime quantize_dynamic(QInt8) MatMul, CPUExecutionProvider",
    "torch_sparse_csr": "torch CSR tensor matmul (cuSPARSE on CUDA)",
    "torch_semi_structured": "torch.sparse.to_sparse_semi_structured (2:4)",
}


@dataclass
class Baseline:
    name: str
    bind: Callable[[torch.Tensor], Callable[[], object]]  # x -> thunk
    settle_s: float = 0.0  # sleep after its timed turn


def dense(weight: torch.Tensor, threads: int) -> Baseline:
    return Baseline("dense", lambda x: (lambda: F.linear(x, weight)))


def torch_dynamic_linear(weight: torch.Tensor) -> torch.nn.Module:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.float().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                      dtype=torch.qint8)


def torch_dynamic_int8(weight: torch.Tensor, threads: int) -> Baseline:
    module = torch_dynamic_linear(weight)
    return Baseline("torch_dynamic_int8", lambda x: (lambda: module(x)))


def ort_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_dynamic_matmul(weight: torch.Tensor, threads: int) -> Optional[Callable]:
    """An ONNX Runtime session computing x @ weight.T with dynamic int8 quantization, as a
    callable on a numpy array; None if onnxruntime is absent."""
    if not ort_available():
        return None
    import numpy as np
    import onnx
    import onnxruntime as ort
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
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})


def ort_int8(weight: torch.Tensor, threads: int) -> Optional[Baseline]:
    run = ort_dynamic_matmul(weight, threads)
    if run is None:
        return None

    def bind(x):
        x_np = x.float().numpy()
        return lambda: run(x_np)
    return Baseline("ort_int8", bind, settle_s=ORT_SETTLE_S)


def torch_sparse_csr(weight: torch.Tensor, threads: int) -> Optional[Baseline]:
    """torch's CSR matmul (cuSPARSE on CUDA), or None where torch refuses the case."""
    try:
        w = weight.to_sparse_csr()
        w @ torch.zeros(weight.shape[1], 8, dtype=weight.dtype, device=weight.device)
    except (RuntimeError, ValueError, NotImplementedError):
        return None
    return Baseline("torch_sparse_csr", lambda x: (lambda: w @ x.T))


def torch_semi_structured(weight: torch.Tensor, threads: int) -> Optional[Baseline]:
    """torch's to_sparse_semi_structured 2:4 path (CUDA), or None where torch refuses the case."""
    try:
        from torch.sparse import to_sparse_semi_structured
        w = to_sparse_semi_structured(weight)
        F.linear(torch.zeros(16, weight.shape[1], dtype=weight.dtype, device=weight.device), w)
    except (RuntimeError, ValueError, NotImplementedError):
        return None
    return Baseline("torch_semi_structured", lambda x: (lambda: F.linear(x, w)))


BUILDERS: dict[str, Callable[[torch.Tensor, int], Optional[Baseline]]] = {
    "dense": dense, "torch_dynamic_int8": torch_dynamic_int8, "ort_int8": ort_int8,
    "torch_sparse_csr": torch_sparse_csr, "torch_semi_structured": torch_semi_structured,
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
