// Scalar CSR kernels: the portable tier (any CPU) and the simplest statement of the layout.
#include <cstring>

#include "common.h"

namespace sparseinfer {
namespace {

constexpr int kRefTile = 16;  // tokens per tile in the token path
constexpr int kMaxRowsM = 8;  // the driver sends m < kMaxRowsM to row kernels

// Walks the non-zeros of row block b in panel order; calls f(r, col, value).
template <class F>
void for_each_nonzero_idx(const PackedCsr& w, int64_t b, F&& f) {
  RowBlock rb = row_block(w, b);
  for (int64_t p = 0; p < w.panels; ++p) {
    int64_t off = panel_offset(w, p, b);
    for (int64_t r = 0; r < rb.nr; ++r) {
      int64_t count = w.counts[p * w.rows + rb.r0 + r];
      for (int64_t i = 0; i < count; ++i)
        f(r, p * kPanelCols + w.local_idx[off + i], load_as_f32(w.dtype, w.values, off + i));
      off += count;
    }
  }
}

template <class F>
void for_each_nonzero_mask(const PackedCsr& w, int64_t b, F&& f) {
  RowBlock rb = row_block(w, b);
  for (int64_t p = 0; p < w.panels; ++p) {
    int64_t off = panel_offset(w, p, b);
    for (int64_t r = 0; r < rb.nr; ++r) {
      const uint16_t* mask = w.bitmask + ((p * w.rows) + rb.r0 + r) * kMaskWordsPerPanel;
      const int64_t count = w.counts[p * w.rows + rb.r0 + r];
      int64_t pop = 0;
      for (int64_t j = 0; j < kMaskWordsPerPanel; ++j) pop += __builtin_popcount(mask[j]);
      if (pop != count) {  // as the vector kernels: skip the row (a count of 0 reads nothing)
        if (count) report_mask_error(w);
        off += count;
        continue;
      }
      for (int64_t j = 0; j < kMaskWordsPerPanel; ++j)
        for (int bit = 0; bit < 16; ++bit)
          if (mask[j] >> bit & 1)
            f(r, p * kPanelCols + j * 16 + bit, load_as_f32(w.dtype, w.values, off++));
    }
  }
}

template <bool kMask>
void rows_ref(const PackedCsr& w, const float* x, int64_t xs, int64_t m, int64_t b0, int64_t b1,
              const LinearOutput& out) {
  float acc[kRowBlock * kMaxRowsM];
  for (int64_t b = b0; b < b1; ++b) {
    std::memset(acc, 0, sizeof(acc));
    auto fma = [&](int64_t r, int64_t col, float v) {
      for (int64_t t = 0; t < m; ++t) acc[r * kMaxRowsM + t] += v * x[t * xs + col];
    };
    if (kMask) for_each_nonzero_mask(w, b, fma);
    else for_each_nonzero_idx(w, b, fma);
    RowBlock rb = row_block(w, b);
    store_block(w, out, rb.r0, rb.nr, 0, m, acc, kMaxRowsM, 1);
  }
}

void tokens_ref(const PackedCsr& w, const float* xt, int vecs, int64_t t0, int64_t mt, int64_t b0,
                int64_t b1, const LinearOutput& out) {
  const int64_t T = static_cast<int64_t>(vecs) * kRefTile;
  float acc[kRowBlock * kRefTile];
  for (int64_t b = b0; b < b1; ++b) {
    std::memset(acc, 0, sizeof(acc));
    for_each_nonzero_idx(w, b, [&](int64_t r, int64_t col, float v) {
      for (int64_t t = 0; t < T; ++t) acc[r * T + t] += v * xt[col * T + t];
    });
    RowBlock rb = row_block(w, b);
    store_block(w, out, rb.r0, rb.nr, t0, mt, acc, T, 1);
  }
}

}  // namespace

const CsrKernels csr_kernels_reference = {
    "reference", kRefTile, 1, rows_ref<false>, rows_ref<true>, tokens_ref,
};

}  // namespace sparseinfer
