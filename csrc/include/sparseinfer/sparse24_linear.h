// 2:4 semi-structured sparse Linear: the packed weight layout the kernels read and the per-ISA
// kernel table. Layout (built once by python/sparseinfer/formats/sparse24.py, validated there):
//   columns are cut into groups of 4 and every group keeps exactly 2 slots (a zero value where
//   the group had fewer non-zeros). 8 groups (32 columns, 16 kept values) form a chunk; columns
//   are zero-padded to whole chunks.
//   values [rows][chunks * 16] in the weight dtype, in column order;
//   meta   [rows][chunks] uint32: bits 2j..2j+1 = column of kept value j within its group (j / 2).
// 1 bit of metadata per weight: the bytes read are 17/32 of dense fp32.
#pragma once
#include <cstdint>

#include "sparseinfer/dtype.h"
#include "sparseinfer/linear_output.h"

namespace sparseinfer {

constexpr int64_t kS24ChunkCols = 32;
constexpr int64_t kS24ChunkKept = 16;
constexpr int64_t kS24RowQuad = 4;    // rows interleaved together in the layout
constexpr int64_t kS24RowBlock = 32;  // rows per accumulator block in the token path

// Index of (row, chunk) in meta, and of its first slot in values.
inline int64_t s24_cell(int64_t chunks, int64_t row, int64_t c) {
  return ((row / kS24RowQuad) * chunks + c) * kS24RowQuad + row % kS24RowQuad;
}

struct PackedSparse24 {
  int64_t rows = 0, cols = 0, chunks = 0;
  DType dtype = DType::f32;
  const void* values = nullptr;    // [rows/4, chunks, 4, 16]
  const uint32_t* meta = nullptr;  // [rows/4, chunks, 4]
};

// Row kernels for small m: x is fp32 [m][xs], xs = chunks * 32, zero-padded. Rows [r0, r1),
// r0 % 4 == 0.
using S24RowsKernel = void (*)(const PackedSparse24& w, const float* x, int64_t xs, int64_t m,
                               int64_t r0, int64_t r1, const LinearOutput& out);
// Token-vectorised kernel: xt is one token tile, fp32 [chunks * 32][lanes * vecs] (token-minor,
// zero-padded), holding tokens [t0, t0 + mt); vecs is 1, 2, 4 or 8. Rows [r0, r1), r0 % 4 == 0.
using S24TokensKernel = void (*)(const PackedSparse24& w, const float* xt, int vecs, int64_t t0,
                                 int64_t mt, int64_t r0, int64_t r1, const LinearOutput& out);

struct Sparse24Kernels {
  const char* isa;
  int lanes;     // fp32 lanes per vector
  int max_vecs;  // widest token tile, in vectors (a power of 2)
  S24RowsKernel rows;
  S24TokensKernel tokens;
};

extern const Sparse24Kernels sparse24_kernels_reference;
extern const Sparse24Kernels sparse24_kernels_avx2;
extern const Sparse24Kernels sparse24_kernels_avx512;

struct Sparse24LinearCall {
  PackedSparse24 w;
  int64_t m = 0;
  const void* x = nullptr;  // [m, cols] contiguous, dtype w.dtype
  LinearOutput out;
};
void sparse24_linear(const Sparse24LinearCall& call, int num_threads);

// Which path sparse24_linear takes for m tokens: "rows" or "tokens".
const char* sparse24_linear_path(int64_t m);

}  // namespace sparseinfer
