// 4-bit lookup Linear: every weight is a 4-bit index into a small table, the one kernel family
// behind the "int4" (uniform: the table is the integers 0..15) and "codebook" (k-means shared
// weights: 16 learned values per output channel or group) formats.
//
// Packed layout (built once by python/sparseinfer/formats/lut4.py, validated there):
//   rows padded to whole blocks of 4, columns to whole chunks of 64 (index 0, zero weight);
//   nibbles [rows_p / 4][kp / 64][4][32] uint8: for every chunk of 64 input columns, 32 bytes per
//     row; byte b holds column 64 j + b in its low nibble and column 64 j + 32 + b in its high
//     nibble, so one 256-bit load, an AND and a shift give the chunk's 64 indices in column order;
//     the 4 rows' chunks follow each other: one sequential stream per row block;
//   scales  [rows_p / 4][groups][4] fp32 per row and group of input columns (groups == 1: per
//     channel), and either zeros [rows_p / 4][groups][4] uint8 (int4: 0..15) or offsets
//     [rows_p / 4][groups][4] fp32 (codebook), offset = scale * zero for int4;
//   levels  [rows_p][groups][16] uint8 in [0, 127], or null (identity: level i = i);
//   table   [rows_p][groups][16] fp32, or null (identity).
// Weight (row r, column k in group g, index i):
//   W8A8-style path (act = dynamic): w = scale[r][g] * level[r][g][i] - offset[r][g]
//   weight-only path (act = none):   w = table[r][g][i] if a table is given, else the above.
// int4 has no tables (level i = i): w = scale * (i - zero) with offset = scale * zero (zero = 8
// for symmetric weights). codebook has the exact values in `table`, and for the integer path
// their 7-bit affine grid: level = round((c - min) / scale), scale = (max - min) / 127,
// offset = -min (error at most scale / 2).
//
// act = dynamic: each token is quantized like int8_linear's W8A8 (symmetric, per token, +-127),
//   dot products of levels (u8) with activations (s8) are exact in int32, and
//     y[t][r] = scale_x[t] * (sum_g scale[r][g] * dot_g - sum_g offset[r][g] * xsum_g) + bias[r]
//   with xsum_g the sum of the token's quantized activations over group g (fp32 sums in any
//   order: not bit-identical across tiers).
// act = none: y = x @ W.T + bias in fp32 (int4 as scale * (index - zero), zero = offset / scale).
#pragma once
#include <cstdint>

#include "sparseinfer/dtype.h"
#include "sparseinfer/linear_output.h"

namespace sparseinfer {

constexpr int64_t kLut4RowBlock = 4;
constexpr int64_t kLut4Chunk = 64;  // columns per 32-byte chunk
// |dot| <= 127 * 127 * K must fit an int32: K <= 133144.
constexpr int64_t kLut4MaxCols = 131072;
// Weight-only calls from this many tokens dequantize each row block once (scratch) instead of
// converting indices per token.
constexpr int64_t kLut4DequantizeMinTokens = 4;

struct PackedLut4 {
  int64_t rows = 0, cols = 0;
  int64_t row_blocks = 0, kp = 0;  // rows_p / 4 and padded columns
  int64_t groups = 1;
  int64_t group_size = 0;          // columns per group (a multiple of 32); 0 when groups == 1
  const uint8_t* nibbles = nullptr;
  const float* scales = nullptr;
  const uint8_t* zeros = nullptr;   // int4, or null
  const float* offsets = nullptr;   // codebook, or null
  const uint8_t* levels = nullptr;  // [rows_p][groups][16] or null
  const float* table = nullptr;     // [rows_p][groups][16] or null
};

// Columns per group as the kernels walk them (per channel: the whole padded row).
inline int64_t lut4_group_width(const PackedLut4& w) { return w.groups == 1 ? w.kp : w.group_size; }
inline int64_t lut4_cell(const PackedLut4& w, int64_t rb, int64_t g) { return (rb * w.groups + g) * kLut4RowBlock; }
inline const uint8_t* lut4_chunk(const PackedLut4& w, int64_t rb, int64_t j) {
  return w.nibbles + ((rb * (w.kp / kLut4Chunk) + j) * kLut4RowBlock) * 32;
}

// Quantized activations (act = dynamic): q [m][kp] int8 (zero beyond cols), scale [m], and the
// per-group sums xsum [m][groups] as fp32 (exact integers).
struct Lut4QuantActs {
  const int8_t* q = nullptr;
  const float* scale = nullptr;
  const float* xsum = nullptr;
};

// act = none: x fp32 [m][kp] (zero beyond cols).
struct Lut4FloatActs {
  const float* x = nullptr;
};

using Lut4DynamicKernel = void (*)(const PackedLut4& w, const Lut4QuantActs& x, int64_t m,
                                   int64_t rb0, int64_t rb1, const LinearOutput& out);
using Lut4WeightOnlyKernel = void (*)(const PackedLut4& w, const Lut4FloatActs& x, int64_t m,
                                      int64_t rb0, int64_t rb1, const LinearOutput& out);

struct Lut4Kernels {
  const char* isa;
  Lut4DynamicKernel dynamic;
  Lut4WeightOnlyKernel weight_only;
};

extern const Lut4Kernels lut4_kernels_reference;
extern const Lut4Kernels lut4_kernels_avx2;

enum class Lut4Act : int { none = 0, dynamic = 1 };

struct Lut4LinearCall {
  PackedLut4 w;
  int64_t m = 0;
  const void* x = nullptr;  // [m, cols] contiguous, dtype out.dtype
  Lut4Act act = Lut4Act::dynamic;
  LinearOutput out;
};
void lut4_linear(const Lut4LinearCall& call, int num_threads);

// "<isa>_dynamic" / "<isa>_float" (e.g. "avx2_dynamic") for the active tier.
const char* lut4_linear_path(Lut4Act act, int64_t m);

}  // namespace sparseinfer
