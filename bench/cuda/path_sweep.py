"""Which CUDA path wins at which m (run on the GPU; picks the limits in
sparseinfer/ops/cuda_paths.py).

Times every path of csr_linear / sparse24_linear against cuBLAS for a range of m, same timer as
`sparseinfer bench --device cuda` (GPU time, L2 flushed before each call).
"""
import torch
import torch.nn.functional as F

from sparseinfer import registry
from sparseinfer.benchmarks.timing_cuda import CudaTimer
from sparseinfer.formats import csr_cuda, sparse24_cuda
from sparseinfer.ops.csr import _cuda_native as csr_cuda_native
from sparseinfer.ops.sparse24 import _cuda_native as sparse24_cuda_native

dev = torch.device("cuda")
timer = CudaTimer(dev)
print(torch.cuda.get_device_name())
print(f"{'case':>26s} {'m':>5s} {'cuBLAS':>8s} " + " ".join(f"{p:>14s}" for p in ("native", "expand+cuBLAS", "split-K", "tiled")))
for shape in ((4096, 4096), (11008, 4096)):
    for fmt, sp in (("csr", 0.7), ("csr", 0.9), ("2:4", 0.5)):
        w, packed = registry.get(fmt).example(*shape, sp, torch.float16)
        dw, packed = w.to(dev), packed.to(dev)
        p = packed.packed
        for m in ((2, 4, 8, 16, 32, 64, 128) if fmt == "csr" else (16, 32, 64, 128, 256, 512, 1024, 2048)):
            x = torch.randn(m, shape[1], device=dev).half()
            dense = timer.median_ms(lambda: F.linear(x, dw), 30)
            if fmt == "csr":
                native = timer.median_ms(lambda: csr_cuda_native(x, p.values, p.index, p.seg_ptr, None, *shape), 30)
                expand = timer.median_ms(lambda: F.linear(x, csr_cuda.dense_on_device(p, *shape)), 30)
                row = [native, expand]
            else:
                expand = timer.median_ms(lambda: F.linear(x, sparse24_cuda.dense_on_device(p, *shape)), 30)
                split = timer.median_ms(lambda: sparse24_cuda_native(x, p.values, p.meta, None, *shape, 1), 30)
                tiled = timer.median_ms(lambda: sparse24_cuda_native(x, p.values, p.meta, None, *shape, 2), 30)
                row = [float("nan"), expand, split, tiled]
            print(f"{fmt + ' ' + str(sp) + ' ' + str(shape):>26s} {m:>5d} {dense:8.4f} " +
                  " ".join(f"{v / dense:>13.2f}x" if v == v else f"{'-':>14s}" for v in row), flush=True)
