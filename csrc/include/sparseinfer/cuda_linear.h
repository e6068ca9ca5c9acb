// The CUDA module's kernels as plain C++ declarations (no CUDA types): csrc/cuda/*.cu define
// them, csrc/bindings/cuda_module.cpp checks arguments and calls them. Pointers are device
// pointers; `stream` is a cudaStream_t passed as void* (torch's current stream).
#pragma once
#include <cstdint>

#include "sparseinfer/dtype.h"

namespace sparseinfer::cuda {

// ---- CSR (formats/csr_cuda.py builds this layout)
// Columns are cut into segments of kCsrSegCols; a segment of x is staged in shared memory.
// Entries are row-major, then by segment, then by column; every (row, segment) range starts at a
// multiple of kCsrVec entries (padding: value 0, index kCsrPadIndex), so a lane loads kCsrVec
// values and indices with one vector load each. An index is the column inside its segment.
constexpr int kCsrSegCols = 2048;
constexpr int kCsrVec = 8;
constexpr uint16_t kCsrPadIndex = 0xFFFF;  // any index >= kCsrSegCols reads a zero column

struct CsrCudaWeight {
  int64_t rows = 0, cols = 0, segs = 0;
  DType dtype = DType::f32;
  const void* values = nullptr;     // [entries], 16-byte aligned
  const uint16_t* index = nullptr;  // [entries], 16-byte aligned
  const int32_t* seg_ptr = nullptr; // [rows * segs + 1]: start of each (row, segment) range
};

// Tokens per pass of the CSR kernel (x columns staged per token); m above this runs in passes.
int csr_tokens_per_pass(int64_t m, DType dtype);
// y[m, rows] = x[m, cols] @ W.T (+ bias); x, y, bias in the weight's dtype.
void csr_linear(int64_t m, const void* x, void* y, const void* bias, const CsrCudaWeight& w, void* stream);
// dense[rows, cols] (row-major, weight dtype) = W: the large-m path expands, then cuBLAS runs.
void csr_to_dense(void* dense, const CsrCudaWeight& w, void* stream);

// ---- 2:4 (formats/sparse24_cuda.py builds this layout)
// Rows in tiles of 16 and columns in tiles of 32 (one mma.sp m16n8k32). Per (row tile, k tile):
// the 16x16 kept values in the mma A-fragment order, 32 lanes x 8 values. Per (row tile, pair of
// k tiles): 32 lanes x uint32 metadata; lanes 4g+2s+j hold, for k tile 2p+s, the 2-bit positions
// of rows g (bits 0-15) and g+8 (bits 16-31), groups 4j..4j+3 (sparsity selector s).
constexpr int kS24TileRows = 16;
constexpr int kS24TileCols = 32;
constexpr int kS24PairCols = 64;

struct Sparse24CudaWeight {
  int64_t rows = 0, cols = 0, row_tiles = 0, k_pairs = 0;
  DType dtype = DType::f16;         // f16 or bf16 (tensor-core operands)
  const void* values = nullptr;     // [row_tiles, 2 * k_pairs, 32, 8]
  const uint32_t* meta = nullptr;   // [row_tiles, k_pairs, 32]
};

// Kernel choice: the split-K (decode) kernel up to kS24SplitMaxM tokens (in passes of 64),
// else the tiled kernel; `path` forces one (for measurements): 0 auto, 1 split-K, 2 tiled.
constexpr int64_t kS24SplitMaxM = 64;
enum class S24Path : int { automatic = 0, split_k = 1, tiled = 2 };
// x is [m, ldx] with ldx % 8 == 0 (zero columns past cols), 16-byte aligned.
void sparse24_linear(int64_t m, const void* x, int64_t ldx, void* y, const void* bias,
                     const Sparse24CudaWeight& w, void* stream, S24Path path = S24Path::automatic);
// dense[rows, cols] (row-major, weight dtype; fp32 too) = W.
void sparse24_to_dense(void* dense, const Sparse24CudaWeight& w, void* stream);

}  // namespace sparseinfer::cuda
