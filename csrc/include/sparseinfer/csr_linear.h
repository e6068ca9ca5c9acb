// CSR sparse Linear: the packed weight layout the kernels read and the per-ISA kernel table.
// Layout (built once by python/sparseinfer/formats/csr.py, validated there):
//   columns are cut into panels of kPanelCols; non-zeros are stored panel-major, then by row,
//   then by column. For each (panel, row): counts[p][r] non-zeros, their column within the panel
//   as a u8 (so any K works and an index can never leave its panel), and optionally a 128-bit
//   row mask (bitmask) for the expand path. block_offsets[p][b] is the offset of the first
//   non-zero of row block b (kRowBlock rows) in panel p.
#pragma once
#include <cstdint>

#include "sparseinfer/dtype.h"
#include "sparseinfer/linear_output.h"

namespace sparseinfer {

constexpr int64_t kPanelCols = 128;
constexpr int64_t kRowBlock = 64;
constexpr int64_t kMaskWordsPerPanel = kPanelCols / 16;  // uint16 words per (panel, row)
// x buffers handed to kernels are zero-padded by one extra panel so a u8 index can never
// read outside them.
constexpr int64_t kXPad = kPanelCols;
constexpr int64_t kValuesPad = 16;  // extra readable elements after the values (vector loads)

struct PackedCsr {
  int64_t rows = 0, cols = 0, panels = 0, row_blocks = 0;
  DType dtype = DType::f32;
  const void* values = nullptr;          // [nnz + kValuesPad]
  const uint8_t* local_idx = nullptr;    // [nnz + kValuesPad]
  const uint8_t* counts = nullptr;       // [panels, rows]
  const int64_t* block_offsets = nullptr;  // [panels, row_blocks + 1]
  const int64_t* block_nnz_prefix = nullptr;  // [row_blocks + 1]: nnz of blocks before b
  const uint16_t* bitmask = nullptr;     // [panels, rows, kMaskWordsPerPanel] or null
  // Set by the driver: the bitmask kernels read popcount(mask) values for a row, so a row whose
  // mask popcount is not its count (raw arrays nobody validated) would read outside its values.
  // They skip such a row (count > 0) and store 1 here; csr_linear then throws invalid_argument.
  int* mask_error = nullptr;
};

// Row-wise kernels for small m: x is fp32, [m][xstride] zero-padded (stride >= panels*128+kXPad).
using RowsKernel = void (*)(const PackedCsr& w, const float* x, int64_t xstride, int64_t m,
                            int64_t b0, int64_t b1, const LinearOutput& out);
// Token-vectorised kernel for larger m: xt is one token tile, fp32 [panels*128 + kXPad][lanes*vecs]
// (token-minor, zero-padded), holding tokens [t0, t0 + mt).
using TokensKernel = void (*)(const PackedCsr& w, const float* xt, int vecs, int64_t t0,
                              int64_t mt, int64_t b0, int64_t b1, const LinearOutput& out);

struct CsrKernels {
  const char* isa;
  int lanes;          // fp32 lanes per vector
  int max_vecs;       // widest token tile, in vectors
  RowsKernel rows_gather;  // uses local_idx
  RowsKernel rows_expand;  // uses bitmask
  TokensKernel tokens;
};

extern const CsrKernels csr_kernels_reference;
extern const CsrKernels csr_kernels_avx2;
extern const CsrKernels csr_kernels_avx512;

// Threaded driver: picks the path and the ISA, splits row blocks across threads by nnz.
struct CsrLinearCall {
  PackedCsr w;
  int64_t m = 0;
  const void* x = nullptr;  // [m, cols] contiguous, dtype w.dtype
  LinearOutput out;
};
void csr_linear(const CsrLinearCall& call, int num_threads);

// Which path csr_linear takes for m tokens on a weight packed with or without a bitmask
// (exposed for tests and benchmarks).
const char* csr_linear_path(int64_t m, bool has_bitmask);

// Load-time packing from the canonical sparse-bitmask arrays (validated in Python first):
// compressed values row-major, bitmask [rows, ceil(cols / 8)] little-endian, row_offsets[r] =
// first value of row r, cell_offsets[p * rows + r] = first output slot of (panel p, row r).
// Writes values (elem_bytes 2 or 4) and local_idx in the kernel's panel order.
struct CsrBitmaskPack {
  int64_t rows = 0, cols = 0;
  int64_t elem_bytes = 4;
  const void* compressed = nullptr;
  const uint8_t* bitmask = nullptr;
  const int64_t* row_offsets = nullptr;   // [rows]
  const int64_t* cell_offsets = nullptr;  // [panels * rows]
  void* values = nullptr;                 // [nnz]
  uint8_t* local_idx = nullptr;           // [nnz]
};
void csr_pack_bitmask(const CsrBitmaskPack& pack, int num_threads);

}  // namespace sparseinfer
