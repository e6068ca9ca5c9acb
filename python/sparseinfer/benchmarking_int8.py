"""int8 Linear measurement shared by `sparseinfer bench --format int8` and bench/ (pytest-benchmark).

Baselines, timed in the same process, interleaved, on the same fp32 input: dense F.linear
(fp32), torch's dynamic int8 Linear (``torch.ao.quantization.quantize_dynamic``), and ONNX
Runtime's dynamic int8 MatMul (``onnxruntime.quantization.quantize_dynamic``, int8 weights,
ORT's defaults) when onnxruntime is installed (``pip install sparseinfer[bench]``).
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from . import ops
from .benchmarking import machine_info, median_ms
from .formats.int8 import Int8

DEFAULT_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (3072, 768))
DEFAULT_MS = (1, 16, 128)
ACTS = ("dynamic", "none")
# After its runs, ONNX Runtime's pool threads spin (its fastest setting, kept) and would steal the
# cores from whatever is timed next on a 2-core machine; this pause lets them go idle first.
ORT_SETTLE_S = 0.05


@dataclass
class Int8Result:
    out_features: int
    in_features: int
    m: int
    act: str
    group_size: Optional[int]
    path: str
    dense_ms: float          # F.linear fp32
    int8_ms: float           # sparseinfer int8_linear
    torch_dynamic_ms: float  # torch.ao quantize_dynamic Linear
    ort_ms: Optional[float]  # ONNX Runtime dynamic int8 MatMul (None: not installed)
    speedup: float           # dense_ms / int8_ms
    vs_torch_dynamic: float  # torch_dynamic_ms / int8_ms
    vs_ort: Optional[float]  # ort_ms / int8_ms
    dense_bytes: int
    int8_bytes: int
    bytes_ratio: float       # dense_bytes / int8_bytes: the m=1 ceiling


def torch_dynamic_linear(weight: torch.Tensor) -> torch.nn.Module:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.float().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                      dtype=torch.qint8)


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


class Baselines:
    """Everything one weight is timed against, built once per weight."""

    def __init__(self, weight: torch.Tensor, with_ort: bool = True):
        self.weight = weight.float()
        self.torch_dynamic = torch_dynamic_linear(self.weight)
        self.ort = ort_dynamic_matmul(self.weight, torch.get_num_threads()) if with_ort else None


def measure(baselines: Baselines, packed: Int8, m: int, act: str, min_time: float = 0.2) -> Int8Result:
    w = baselines.weight
    x = torch.randn(m, w.shape[1])
    x_np = x.numpy()
    fns = {"dense": lambda: F.linear(x, w), "int8": lambda: ops.int8_linear(x, packed, act=act),
           "torch_dynamic": lambda: baselines.torch_dynamic(x)}
    if baselines.ort is not None:
        fns["ort"] = lambda: baselines.ort(x_np)
    times = {k: [] for k in fns}
    for _ in range(3):  # interleaved rounds: machine noise hits every side alike
        for k, fn in fns.items():
            times[k].append(median_ms(fn, min_time / 3))
            if k == "ort":  # let ORT's spinning pool threads park before the next side runs
                time.sleep(ORT_SETTLE_S)
    t = {k: statistics.median(v) for k, v in times.items()}
    ort_ms = t.get("ort")
    return Int8Result(w.shape[0], w.shape[1], m, act, packed.group_size,
                      ops.int8_linear_path(packed, m, act), t["dense"], t["int8"], t["torch_dynamic"],
                      ort_ms, t["dense"] / t["int8"], t["torch_dynamic"] / t["int8"],
                      None if ort_ms is None else ort_ms / t["int8"], w.numel() * 4, packed.nbytes(),
                      w.numel() * 4 / packed.nbytes())


def run_grid(shapes: Iterable[tuple[int, int]], ms: Iterable[int], acts: Iterable[str] = ACTS,
             group_size: Optional[int] = None, min_time: float = 0.2, with_ort: bool = True,
             progress=None) -> list[Int8Result]:
    results = []
    for out_f, in_f in shapes:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(out_f, in_f, generator=g)
        baselines, packed = Baselines(w, with_ort), Int8.from_dense(w, group_size)
        for act in acts:
            for m in ms:
                results.append(measure(baselines, packed, m, act, min_time))
                if progress is not None:
                    progress(results[-1])
    return results


def grid_size(shapes, ms, acts=ACTS) -> int:
    return len(list(shapes)) * len(list(ms)) * len(list(acts))


def format_table(results: list[Int8Result]) -> str:
    head = (f"{'act':>7s} {'shape (out x in)':>17s} {'m':>4s} {'path':>12s} {'dense ms':>9s} "
            f"{'int8 ms':>8s} {'vs dense':>8s} {'torch dyn':>9s} {'vs torch':>8s} {'ORT ms':>7s} "
            f"{'vs ORT':>7s} {'bytes ratio':>11s}")
    lines = [head, "-" * len(head)]
    for r in results:
        ort = f"{r.ort_ms:7.3f} {r.vs_ort:6.2f}x" if r.ort_ms is not None else f"{'-':>7s} {'-':>7s}"
        lines.append(f"{r.act:>7s} {r.out_features:>8d} x {r.in_features:<6d} {r.m:>4d} {r.path:>12s} "
                     f"{r.dense_ms:>9.3f} {r.int8_ms:>8.3f} {r.speedup:>7.2f}x {r.torch_dynamic_ms:>9.3f} "
                     f"{r.vs_torch_dynamic:>7.2f}x {ort} {r.bytes_ratio:>10.2f}x")
    return "\n".join(lines)


def results_json(results: list[Int8Result]) -> dict:
    return {"machine": machine_info(),
            "baselines": {"dense": "F.linear fp32", "torch_dynamic": "torch.ao quantize_dynamic qint8 Linear",
                          "ort": "onnxruntime quantize_dynamic(QInt8) MatMul, CPUExecutionProvider"},
            "results": [asdict(r) for r in results]}
