// Helpers shared by every CSR kernel file. Everything here has internal linkage (static or
// anonymous namespace) because each file is compiled with different ISA flags.
#pragma once
#include <algorithm>
#include <cstdint>

#include "sparseinfer/csr_linear.h"

namespace sparseinfer {
namespace {

struct RowBlock {
  int64_t r0, nr;
};

inline RowBlock row_block(const PackedCsr& w, int64_t b) {
  int64_t r0 = b * kRowBlock;
  return {r0, std::min<int64_t>(kRowBlock, w.rows - r0)};
}

inline int64_t panel_offset(const PackedCsr& w, int64_t p, int64_t b) {
  return w.block_offsets[p * (w.row_blocks + 1) + b];
}

// y[t0 + t][r0 + r] = acc[r * rs + t * ts] + bias[r0 + r] for t < mt, r < nr.
inline void store_block(const PackedCsr& w, const CsrOutput& out, int64_t r0, int64_t nr,
                        int64_t t0, int64_t mt, const float* acc, int64_t rs, int64_t ts) {
  for (int64_t t = 0; t < mt; ++t) {
    int64_t base = (t0 + t) * w.rows + r0;
    for (int64_t r = 0; r < nr; ++r) {
      float v = acc[r * rs + t * ts];
      if (out.bias) v += load_as_f32(out.dtype, out.bias, r0 + r);
      store_from_f32(out.dtype, out.y, base + r, v);
    }
  }
}

}  // namespace
}  // namespace sparseinfer

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

}  // namespace
}  // namespace sparseinfer
