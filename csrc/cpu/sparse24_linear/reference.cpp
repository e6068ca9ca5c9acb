// Scalar 2:4 kernels: the portable tier (any CPU) and the simplest statement of the layout.
// They accumulate in double: one sequential sum over K/2 terms would otherwise lose accuracy
// that the vector tiers (16 partial sums) keep.
#include "common.h"

namespace sparseinfer {
namespace {

constexpr int kRefTile = 16;  // tokens per vector in the token path

// Calls f(col, value) for every kept slot of row r.
template <class F>
void for_each_kept(const PackedSparse24& w, int64_t r, F&& f) {
  for (int64_t c = 0; c < w.chunks; ++c) {
    const int64_t cell = s24_cell(w.chunks, r, c);
    const uint32_t meta = w.meta[cell];
    for (int j = 0; j < int(kS24ChunkKept); ++j) {
      const int64_t col = c * kS24ChunkCols + 4 * (j / 2) + (meta >> (2 * j) & 3u);
      f(col, load_as_f32(w.dtype, w.values, cell * kS24ChunkKept + j));
    }
  }
}

void rows_ref(const PackedSparse24& w, const float* x, int64_t xs, int64_t m, int64_t r0,
              int64_t r1, const LinearOutput& out) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t t = 0; t < m; ++t) {
      double acc = 0.0;
      for_each_kept(w, r, [&](int64_t col, float v) { acc += double(v) * x[t * xs + col]; });
      const float result = static_cast<float>(acc);
      store_block(w.rows, out, r, 1, t, 1, &result, 1, 1);
    }
  }
}

void tokens_ref(const PackedSparse24& w, const float* xt, int vecs, int64_t t0, int64_t mt,
                int64_t r0, int64_t r1, const LinearOutput& out) {
  const int64_t T = static_cast<int64_t>(vecs) * kRefTile;
  double acc[kRefTile * 8];
  float result[kRefTile * 8];
  for (int64_t r = r0; r < r1; ++r) {
    std::fill(acc, acc + T, 0.0);
    for_each_kept(w, r, [&](int64_t col, float v) {
      for (int64_t t = 0; t < T; ++t) acc[t] += double(v) * xt[col * T + t];
    });
    for (int64_t t = 0; t < T; ++t) result[t] = static_cast<float>(acc[t]);
    store_block(w.rows, out, r, 1, t0, mt, result, 1, 1);
  }
}

}  // namespace

const Sparse24Kernels sparse24_kernels_reference = {"reference", kRefTile, 8, rows_ref, tokens_ref};

}  // namespace sparseinfer
