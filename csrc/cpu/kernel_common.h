// Helpers shared by the Linear kernels of every format. Internal linkage only (anonymous
// namespace): each ISA file is compiled with its own flags.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "sparseinfer/dtype.h"
#include "sparseinfer/linear_output.h"

namespace sparseinfer {
namespace {

template <DType DT>
void store_block_dt(int64_t rows, const LinearOutput& out, int64_t r0, int64_t nr, int64_t t0,
                    int64_t mt, const float* acc, int64_t rs, int64_t ts) {
  for (int64_t t = 0; t < mt; ++t) {
    const int64_t base = (t0 + t) * rows + r0;
    const float* a = acc + t * ts;
    if (out.bias) {
      for (int64_t r = 0; r < nr; ++r)
        store_from_f32(DT, out.y, base + r, a[r * rs] + load_as_f32(DT, out.bias, r0 + r));
    } else {
      for (int64_t r = 0; r < nr; ++r) store_from_f32(DT, out.y, base + r, a[r * rs]);
    }
  }
}

// y[t0 + t][r0 + r] = acc[r * rs + t * ts] + bias[r0 + r] for t < mt, r < nr; y has `rows` columns.
inline void store_block(int64_t rows, const LinearOutput& out, int64_t r0, int64_t nr, int64_t t0,
                        int64_t mt, const float* acc, int64_t rs, int64_t ts) {
  switch (out.dtype) {
    case DType::f32: return store_block_dt<DType::f32>(rows, out, r0, nr, t0, mt, acc, rs, ts);
    case DType::bf16: return store_block_dt<DType::bf16>(rows, out, r0, nr, t0, mt, acc, rs, ts);
    case DType::f16: return store_block_dt<DType::f16>(rows, out, r0, nr, t0, mt, acc, rs, ts);
  }
}

// Packs tokens [t0, t0 + mt) of x ([m, cols], dtype dt) into a token-minor tile
// xt[c][t] (c < c_end, T tokens wide), zero for c >= cols and t >= mt. Columns [c_begin, c_end).
template <DType DT>
void pack_tokens_dt(const void* x, int64_t cols, int64_t t0, int64_t mt, int64_t T,
                    int64_t c_begin, int64_t c_end, float* xt) {
  constexpr int64_t kCB = 16;
  for (int64_t cb = c_begin; cb < c_end; cb += kCB) {
    int64_t ce = std::min(cb + kCB, c_end);
    int64_t cv = std::min(ce, cols);  // valid columns in this block
    for (int64_t c = cb; c < ce; ++c)
      for (int64_t t = mt; t < T; ++t) xt[c * T + t] = 0.f;
    for (int64_t c = std::max(cv, cb); c < ce; ++c)
      for (int64_t t = 0; t < mt; ++t) xt[c * T + t] = 0.f;
    for (int64_t t = 0; t < mt; ++t) {
      int64_t row = (t0 + t) * cols;
      for (int64_t c = cb; c < cv; ++c) xt[c * T + t] = load_as_f32(DT, x, row + c);
    }
  }
}

inline void pack_tokens(DType dt, const void* x, int64_t cols, int64_t t0, int64_t mt, int64_t T,
                        int64_t c_begin, int64_t c_end, float* xt) {
  switch (dt) {
    case DType::f32: return pack_tokens_dt<DType::f32>(x, cols, t0, mt, T, c_begin, c_end, xt);
    case DType::bf16: return pack_tokens_dt<DType::bf16>(x, cols, t0, mt, T, c_begin, c_end, xt);
    case DType::f16: return pack_tokens_dt<DType::f16>(x, cols, t0, mt, T, c_begin, c_end, xt);
  }
}

// x [m, cols] in dtype dt -> fp32 rows of `stride` floats, zero beyond cols.
inline void rows_to_f32(DType dt, const void* x, int64_t m, int64_t cols, int64_t stride, float* out) {
  for (int64_t t = 0; t < m; ++t) {
    float* row = out + t * stride;
    switch (dt) {
      case DType::f32: {
        const float* src = static_cast<const float*>(x) + t * cols;
        std::copy(src, src + cols, row);
        break;
      }
      default:
        for (int64_t c = 0; c < cols; ++c) row[c] = load_as_f32(dt, x, t * cols + c);
    }
    std::fill(row + cols, row + stride, 0.f);
  }
}

// Per-thread scratch, 64-byte aligned: vector loads from a misaligned buffer (malloc's mmap
// chunks are 16 bytes off a line) split across two cache lines. Drivers lay out x in
// kDriverScratch while kernels (run on the same threads) keep partial sums in kKernelScratch.
constexpr int kDriverScratch = 0;
constexpr int kKernelScratch = 1;
template <int kWhich>
float* scratch_floats(int64_t n) {
  thread_local std::vector<float> buffer;
  constexpr int64_t kAlign = 64 / sizeof(float);
  if (static_cast<int64_t>(buffer.size()) < n + kAlign) buffer.resize(n + kAlign);
  auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + ((64 - address % 64) % 64) / sizeof(float);
}

}  // namespace
}  // namespace sparseinfer
