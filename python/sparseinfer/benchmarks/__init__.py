"""Benchmarks shared by the `sparseinfer bench*` commands and bench/ (pytest-benchmark).

timing (the CPU timer), timing_cuda (the CUDA-event timer), report (machine info, tables, JSON),
baselines (what our ops are timed against), weight_bytes (bytes a call streams), and one module
per suite: linear (every registered format on the CPU), cuda (the GPU kernels), checkpoint_load.
Every ratio compares timings taken in the same process, interleaved, on the same inputs.
"""
