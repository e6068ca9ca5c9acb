// Measured memory read bandwidth (see csrc/cpu/runtime/bandwidth.cpp).
#pragma once
#include <cstdint>

namespace sparseinfer::cpu {

// Best GB/s of `reps` passes (the peak a kernel can reach; a VM's bandwidth varies pass to pass) reading `bytes` of `buffer` on `threads` threads.
double read_bandwidth_gbs(const void* buffer, int64_t bytes, int threads, int reps);

}  // namespace sparseinfer::cpu
