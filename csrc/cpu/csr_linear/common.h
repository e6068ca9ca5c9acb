// Helpers shared by every CSR kernel file. Everything here has internal linkage (static or
// anonymous namespace) because each file is compiled with different ISA flags.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../kernel_common.h"
#include "sparseinfer/csr_linear.h"
#include "sparseinfer/scratch.h"

namespace sparseinfer {
namespace {

struct RowBlock {
  int64_t r0, nr;
};

inline RowBlock row_block(const PackedCsr& w, int64_t b) {
  int64_t r0 = b * kRowBlock;
  return {r0, std::min<int64_t>(kRowBlock, w.rows - r0)};
}

// A row whose bitmask popcount differs from its count (see PackedCsr::mask_error).
inline void report_mask_error(const PackedCsr& w) {
  if (w.mask_error) __atomic_store_n(w.mask_error, 1, __ATOMIC_RELAXED);
}

inline int64_t panel_offset(const PackedCsr& w, int64_t p, int64_t b) {
  return w.block_offsets[p * (w.row_blocks + 1) + b];
}

inline void store_block(const PackedCsr& w, const LinearOutput& out, int64_t r0, int64_t nr,
                        int64_t t0, int64_t mt, const float* acc, int64_t rs, int64_t ts) {
  store_block(w.rows, out, r0, nr, t0, mt, acc, rs, ts);
}

}  // namespace
}  // namespace sparseinfer
