// Helpers for the threaded drivers (dispatch.cpp files, built with baseline flags): laying out
// x once per call, sharing work among threads, re-running the tokens W8A8 cannot quantize.
// Internal linkage only.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "kernel_common.h"
#include "sparseinfer/dtype.h"
#include "sparseinfer/scratch.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {
namespace {

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

// x^T token tiles for the token-vectorised kernels: tokens [t0, t0 + mt) as a zero-padded,
// token-minor fp32 tile of `vecs` vectors, at xt + offset.
struct TokenTile {
  int64_t t0, mt;
  int vecs;
  int64_t offset;
};

struct TokenTiles {
  std::vector<TokenTile> tiles;
  const float* xt = nullptr;
};

// Cuts m tokens into tiles of up to lanes * max_vecs (vecs rounded up to a power of 2 when the
// kernel addresses x^T columns with shifts) and lays x out once per call, in parallel.
inline TokenTiles pack_token_tiles(DType dt, const void* x, int64_t m, int64_t cols,
                                   int64_t padded_cols, int lanes, int max_vecs, bool pow2_vecs,
                                   int num_threads, int64_t min_work_per_thread) {
  TokenTiles out;
  const int64_t widest = int64_t(lanes) * max_vecs;
  int64_t total = 0;
  for (int64_t t0 = 0; t0 < m; t0 += widest) {
    const int64_t mt = std::min(widest, m - t0);
    int vecs = static_cast<int>((mt + lanes - 1) / lanes);
    if (pow2_vecs) {
      int p = 1;
      while (p < vecs) p *= 2;
      vecs = p;
    }
    out.tiles.push_back({t0, mt, vecs, total});
    total += padded_cols * vecs * lanes;
  }
  float* xt = scratch_floats(kDriverScratch, total);
  const int tasks = static_cast<int>(
      std::min<int64_t>(num_threads, std::max<int64_t>(1, m * cols / min_work_per_thread)));
  cpu::parallel_for_tasks(tasks, [&](int t, int n) {
    const int64_t c0 = padded_cols * t / n, c1 = padded_cols * (t + 1) / n;
    for (const TokenTile& tile : out.tiles)
      pack_tokens(dt, x, cols, tile.t0, tile.mt, int64_t(tile.vecs) * lanes, c0, c1, xt + tile.offset);
  });
  out.xt = xt;
  return out;
}

// body(u0, u1) over units [0, units) (row blocks, row pairs), on at most num_threads tasks and
// one per min_work of `work`, in kChunksPerTask pieces per task taken from a shared counter: a
// thread that starts late or runs slower (a busy or preempted core) takes fewer pieces instead
// of holding every other thread at the end of the call.
constexpr int64_t kChunksPerTask = 8;

template <class F>
void run_unit_chunks(int64_t units, int64_t work, int64_t min_work, int num_threads, F&& body) {
  const int tasks = static_cast<int>(
      std::min<int64_t>({int64_t(num_threads), units, std::max<int64_t>(1, work / min_work)}));
  if (tasks <= 1) return body(int64_t(0), units);
  const int64_t chunks = std::min<int64_t>(units, tasks * kChunksPerTask);
  std::atomic<int64_t> next{0};
  cpu::parallel_for_tasks(tasks, [&](int, int) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const int64_t u0 = units * c / chunks, u1 = units * (c + 1) / chunks;
      if (u0 < u1) body(u0, u1);
    }
  });
}

// W8A8 drivers: a token holding a NaN or an inf cannot be quantized (its scale is not finite),
// so its output row is recomputed by float_row(x fp32 [kp], out) (the weight-only path, which
// propagates them). q and the scales are no longer needed then: the scratch is reused.
template <class F>
void rerun_nonfinite_tokens(const void* x, int64_t m, int64_t cols, int64_t kp, int64_t rows,
                            const float* scale, const LinearOutput& out, F&& float_row) {
  std::vector<int64_t> tokens;
  for (int64_t t = 0; t < m; ++t)
    if (!(scale[t] == scale[t] && scale[t] - scale[t] == 0.f)) tokens.push_back(t);
  const int64_t dsize = dtype_size(out.dtype);
  for (int64_t t : tokens) {
    float* row = scratch_floats(kDriverScratch, kp);
    rows_to_f32(out.dtype, static_cast<const char*>(x) + t * cols * dsize, 1, cols, kp, row);
    LinearOutput one = out;
    one.y = static_cast<char*>(out.y) + t * rows * dsize;
    float_row(static_cast<const float*>(row), one);
  }
}

}  // namespace
}  // namespace sparseinfer
