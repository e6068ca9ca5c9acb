// int8 Linear: symmetric int8 weights with per-output-channel or per-group fp32 scales, two
// activation modes, and the per-ISA kernel table.
//
// Packed layout (built once by python/sparseinfer/formats/int8.py, validated there):
//   rows padded to whole blocks of 16, columns to whole blocks of 64 (zero weights);
//   qweight [rows_p / 16][kp / 4][16][4] int8: for every 4 consecutive input columns, the 16 rows'
//     4 weights sit in one 64-byte line, which is at once a `vpdpbusd` operand (16 int32 lanes =
//     16 rows) and one row of an AMX B tile (16 K-quads x 16 rows per 1 KB tile);
//   wsum   [rows_p / 16][groups][16] int32: the sum of each row's weights in a group (for the u8 x s8
//     compensation), 16 rows of a block side by side so one vector load serves a row block;
//   scales [rows_p / 16][groups][16] fp32: weight scale of each row and group (one group = per channel).
//
// act = dynamic (W8A8): each token is quantized symmetrically, q = clamp(rint(x * 127 / max|x|),
//   -127, 127), scale_x = max|x| / 127; the integer dot products are exact (int32, no overflow for
//   K <= kInt8MaxCols) and
//     y[t][r] = (sum over groups g, in order, of float(dot_g) * scale[r][g]) * scale_x[t] + bias[r]
//   with every product and sum rounded in fp32 (no fused multiply-add), so every ISA gives the
//   same bits as python/sparseinfer/reference.py.
//   Non-finite activations: a token holding a NaN or an inf cannot be quantized. Its max|x| is
//   computed NaN-propagating (NaN if any NaN, else +inf), quantize_row stores q = 0 and
//   scale_x = max|x| / 127 (NaN or +inf: the mark), and the driver computes that token's row as
//     y[t][r] = (sum over the columns k where x[t][k] is NaN or +-inf of
//                x[t][k] * (float(q_w[r][k]) * scale[r][g(k)])) + bias[r]
//   in fp32. Every term is NaN or +-inf, so the sum is the same in any order: NaN if the token
//   holds a NaN, if an inf meets a zero weight or if infinities of both signs meet; otherwise
//   the one infinity. This is x @ dequant(W).T as F.linear / act = none propagate it, except
//   that the token's finite columns are left out (they matter only if their own sum overflows).
// act = none (weight-only): y = x @ dequant(W).T + bias, fp32 accumulation.
#pragma once
#include <cstdint>

#include "sparseinfer/dtype.h"
#include "sparseinfer/linear_output.h"

namespace sparseinfer {

constexpr int64_t kInt8RowBlock = 16;
constexpr int64_t kInt8KBlock = 64;
// |dot| <= 255 * 128 * K must fit an int32 in the u8 x s8 kernels: K <= 65793.
constexpr int64_t kInt8MaxCols = 65536;

struct PackedInt8 {
  int64_t rows = 0, cols = 0;
  int64_t row_blocks = 0, kp = 0;  // rows_p / 16 and padded columns
  int64_t groups = 1;
  int64_t group_size = 0;          // columns per group; the whole row when groups == 1
  const int8_t* qweight = nullptr;
  const int32_t* wsum = nullptr;
  const float* scales = nullptr;
};

// Index of (row block rb, group g) in wsum / scales (16 rows follow).
inline int64_t int8_group_cell(const PackedInt8& w, int64_t rb, int64_t g) { return (rb * w.groups + g) * 16; }

// Offset of the 64-byte line holding rows [16 rb, 16 rb + 16) x columns [4 kq, 4 kq + 4).
inline int64_t int8_line(const PackedInt8& w, int64_t rb, int64_t kq) {
  return (rb * (w.kp / 4) + kq) * 64;
}

// Quantized activations: q [m_p][kp] (zero beyond cols and for padding tokens) and scale [m_p]
// fp32. Tiers whose instructions take u8 x s8 (u8_acts) store q + 128 as uint8 and subtract
// 128 * wsum from every dot product.
struct QuantizedActs {
  const int8_t* q = nullptr;
  const float* scale = nullptr;
  int64_t stride = 0;  // = kp
};

// W8A8 kernel over tokens [t0, t0 + mt) and row blocks [rb0, rb1).
using Int8DynamicKernel = void (*)(const PackedInt8& w, const QuantizedActs& x, int64_t t0,
                                   int64_t mt, int64_t rb0, int64_t rb1, const LinearOutput& out);
// Weight-only kernel: x fp32 [m][kp] (zero-padded), tokens [t0, t0 + mt), row blocks [rb0, rb1).
using Int8WeightOnlyKernel = void (*)(const PackedInt8& w, const float* x, int64_t t0, int64_t mt,
                                      int64_t rb0, int64_t rb1, const LinearOutput& out);

// One token's quantization: x row (cols values of dtype) -> q[stride] (zero / 128 beyond cols).
using Int8QuantizeRow = void (*)(DType dtype, const void* x, int64_t cols, int64_t stride,
                                 int8_t* q, float* scale);

struct Int8Kernels {
  const char* isa;
  bool u8_acts;
  Int8QuantizeRow quantize_row;
  Int8DynamicKernel dynamic_rows;      // any m (used for small m)
  const char* rows_path;               // int8_linear_path's name for dynamic_rows
  Int8DynamicKernel dynamic_tiles;     // large m (AMX), or null
  const char* tiles_path;              // int8_linear_path's name for dynamic_tiles, or null
  int64_t tiles_min_m;                 // m from which dynamic_tiles runs
  Int8WeightOnlyKernel weight_only;
  int64_t weight_only_tiles_min_m;     // m from which weight_only dequantizes chunks once
                                       // ("dequant_tiles"); 0: never ("dequant_rows")
};

extern const Int8Kernels int8_kernels_reference;
extern const Int8Kernels int8_kernels_avx2;
extern const Int8Kernels int8_kernels_avx512_vnni;
extern const Int8Kernels int8_kernels_amx;

enum class Int8Act : int { none = 0, dynamic = 1 };

struct Int8LinearCall {
  PackedInt8 w;
  int64_t m = 0;
  const void* x = nullptr;  // [m, cols] contiguous, dtype out.dtype
  Int8Act act = Int8Act::dynamic;
  LinearOutput out;
};
void int8_linear(const Int8LinearCall& call, int num_threads);

// Which path int8_linear takes for m tokens: "dequant_rows" or "dequant_tiles" for act none, else
// the active tier's Int8Kernels::rows_path or tiles_path (e.g. "vnni_rows", "amx_tiles").
const char* int8_linear_path(Int8Act act, int64_t m, int64_t groups, int64_t group_size);

// Per-token symmetric quantization with the active tier's code, exposed so tests can compare it
// with the reference exactly. x [m, cols] in dtype -> q [m][stride] int8 (zero beyond cols), scale [m];
// a token with a NaN or an inf gets q = 0 and scale NaN (it holds a NaN) or +inf.
void quantize_rows_int8(DType dtype, const void* x, int64_t m, int64_t cols, int64_t stride,
                        int8_t* q, float* scale);

}  // namespace sparseinfer
