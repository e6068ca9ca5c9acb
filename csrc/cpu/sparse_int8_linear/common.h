// Shared by every sparse int8 kernel file (internal linkage: each file has its own ISA flags).
#pragma once
#include <cstdint>

#include "../kernel_common.h"
#include "sparseinfer/sparse_int8_linear.h"

namespace sparseinfer {
namespace {

// Window pairs [wp0, wp1) of group g.
inline int64_t spi8_group_begin(const PackedSparseInt8& w, int64_t g) { return g * spi8_group_pairs(w); }
inline int64_t spi8_group_end(const PackedSparseInt8& w, int64_t g) {
  const int64_t end = (g + 1) * spi8_group_pairs(w), total = w.kp / kSpI8WindowPair;
  return end < total ? end : total;
}

inline float spi8_scale(const PackedSparseInt8& w, int64_t row, int64_t g) { return w.scales[row * w.groups + g]; }

// Stores the pair's two rows (row B only when it exists).
inline void spi8_store_pair(const PackedSparseInt8& w, int64_t p, int64_t t, float a, float b, const LinearOutput& out) {
  store_block(w.rows, out, 2 * p, 1, t, 1, &a, 1, 1);
  if (2 * p + 1 < w.rows) store_block(w.rows, out, 2 * p + 1, 1, t, 1, &b, 1, 1);
}

}  // namespace
}  // namespace sparseinfer
