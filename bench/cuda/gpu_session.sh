#!/usr/bin/env bash
# One call on a lent GPU machine (see README "CUDA"): build, test, memcheck, benchmark.
# Usage: bash bench/cuda/gpu_session.sh [build] [test] [memcheck] [bench ARGS...]
# Writes logs/JSON under $OUT (default ./gpu_out). Needs torch, nvcc, CMake, pybind11,
# scikit-build-core on that machine (no registry needed).
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
while [ $# -gt 0 ]; do
  case "$1" in
    build)
      nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
      # Only the target this machine runs, to keep the build short.
      CMAKE_ARGS="-DSPARSEINFER_CUDA=ON -DSPARSEINFER_CUDA_ARCHS=90a" \
        python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 \
        || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -c "import sparseinfer; print(sparseinfer.cuda_build_info())" ;;
    test)
      (cd tests && python3 -m pytest -q -x -p no:cacheprovider . 2>&1 | tee "$OUT/cuda_tests.txt" | tail -25)
      status=$((status | ${PIPESTATUS[0]})) ;;
    memcheck)
      (cd tests && compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x \
          -p no:cacheprovider test_cuda_linear.py 2>&1 | tee "$OUT/memcheck.txt" | tail -8)
      status=$((status | ${PIPESTATUS[0]})) ;;
    sweep)
      python3 bench/cuda/path_sweep.py 2>&1 | tee "$OUT/path_sweep.txt" ;;
    bench)
      shift
      python3 -m sparseinfer.cli bench --device cuda --json "$OUT/bench.json" "$@" 2>/dev/null \
        | tee "$OUT/bench.txt"
      break ;;
  esac
  shift
done
exit $status
