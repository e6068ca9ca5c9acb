"""A/B of the two m = 1 CSR paths on the active ISA tier: the same weights packed with and without
the bitmask (rows_expand vs rows_gather), timed warm in interleaved rounds (best of each), so the
pack-time density crossover (formats/csr_cpu.py: bitmask_min_density) can be checked per machine.

    python bench/csr_m1_paths_ab.py [--threads 1] [--rows 4096] [--cols 4096] [--rounds 15]
"""
import argparse
import time

import torch

import sparseinfer
from sparseinfer.formats.csr import CSR
from sparseinfer.nn import CSRLinear


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x = torch.randn(1, args.cols)
    layers = {}
    for sparsity in (0.5, 0.7, 0.8, 0.9):
        w = torch.randn(args.rows, args.cols)
        w[torch.rand_like(w) < sparsity] = 0
        for bitmask in (True, False):
            layers[(sparsity, bitmask)] = CSRLinear.from_weight(CSR.from_dense(w, bitmask=bitmask))
    best = {k: float("inf") for k in layers}
    for _ in range(args.rounds):
        for k, layer in layers.items():
            for _ in range(3):
                layer(x)
            start = time.perf_counter()
            for _ in range(20):
                layer(x)
            best[k] = min(best[k], (time.perf_counter() - start) / 20)
    info = sparseinfer.runtime.build_info()
    print(f"# {args.rows}x{args.cols} fp32, m=1, warm, {args.threads} thread(s), best of {args.rounds} "
          f"interleaved rounds, ISA {info['active_isa']}")
    for sparsity in (0.5, 0.7, 0.8, 0.9):
        expand, gather = best[(sparsity, True)], best[(sparsity, False)]
        print(f"sparsity {sparsity:.1f}: rows_expand {expand * 1e3:.3f} ms, rows_gather {gather * 1e3:.3f} ms, "
              f"gather / expand time {gather / expand:.2f}")


if __name__ == "__main__":
    main()
