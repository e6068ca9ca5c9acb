// Shared by every lut4 kernel file (internal linkage: each file has its own ISA flags).
#pragma once
#include <cstdint>

#include "../kernel_common.h"
#include "sparseinfer/lut4_linear.h"

namespace sparseinfer {
namespace {

// 4-bit index of weight (row r, column k) in the packed layout.
inline int lut4_index(const PackedLut4& w, int64_t r, int64_t k) {
  const int64_t j = k / kLut4Chunk, c = k % kLut4Chunk;
  const uint8_t byte = lut4_chunk(w, r / kLut4RowBlock, j)[(r % kLut4RowBlock) * 32 + c % 32];
  return c < 32 ? (byte & 15) : (byte >> 4);
}

inline int64_t lut4_group_of(const PackedLut4& w, int64_t k) { return w.groups == 1 ? 0 : k / w.group_size; }

// Integer level of index i (row r, group g): the codebook's 7-bit grid or i itself (int4).
inline int lut4_level(const PackedLut4& w, int64_t r, int64_t g, int i) {
  return w.levels ? w.levels[(r * w.groups + g) * 16 + i] : i;
}

inline float lut4_scale(const PackedLut4& w, int64_t r, int64_t g) {
  return w.scales[lut4_cell(w, r / kLut4RowBlock, g) + r % kLut4RowBlock];
}
inline float lut4_offset(const PackedLut4& w, int64_t r, int64_t g) {
  const int64_t cell = lut4_cell(w, r / kLut4RowBlock, g) + r % kLut4RowBlock;
  return w.zeros ? w.scales[cell] * static_cast<float>(w.zeros[cell]) : w.offsets[cell];
}

// The weight the float path multiplies.
inline float lut4_float_weight(const PackedLut4& w, int64_t r, int64_t k) {
  const int64_t g = lut4_group_of(w, k);
  const int i = lut4_index(w, r, k);
  if (w.table) return w.table[(r * w.groups + g) * 16 + i];
  if (w.zeros)
    return lut4_scale(w, r, g) *
           static_cast<float>(i - w.zeros[lut4_cell(w, r / kLut4RowBlock, g) + r % kLut4RowBlock]);
  return lut4_scale(w, r, g) * static_cast<float>(lut4_level(w, r, g, i)) - lut4_offset(w, r, g);
}

}  // namespace
}  // namespace sparseinfer
