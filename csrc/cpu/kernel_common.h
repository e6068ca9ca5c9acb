// Helpers the Linear kernels of every format share. Internal linkage only (anonymous
// namespace): each ISA file is compiled with its own flags. No STL containers or algorithms
// here: an ISA file's out-of-line copy of a shared template could be the one the linker keeps.
#pragma once
#include <cstdint>

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

}  // namespace
}  // namespace sparseinfer
