// Shared by every int8 kernel file (internal linkage: each file has its own ISA flags).
// The W8A8 epilogue is written out once here, in the order int8_linear.h specifies.
#pragma once
#include <cmath>
#include <cstdint>

#include "../kernel_common.h"
#include "sparseinfer/int8_linear.h"

namespace sparseinfer {
namespace {

// Columns [k0, k1) of group g (the last group may be short).
inline int64_t group_begin(const PackedInt8& w, int64_t g) { return w.groups == 1 ? 0 : g * w.group_size; }
inline int64_t group_end(const PackedInt8& w, int64_t g) {
  return w.groups == 1 ? w.kp : (g + 1 == w.groups ? w.kp : (g + 1) * w.group_size);
}

// Weight (row r, column k) of the packed layout.
inline int8_t weight_at(const PackedInt8& w, int64_t r, int64_t k) {
  return w.qweight[int8_line(w, r / kInt8RowBlock, k / 4) + (r % kInt8RowBlock) * 4 + k % 4];
}

// max|x| of a token as an integer max over |x|'s bit patterns: for non-negative floats integer
// order is float order, and every NaN lies above +inf, so the result equals the float max of a
// finite row exactly and is NaN (any NaN in the row) or +inf (else any inf) otherwise. Same
// cost as a float max, and a float max would drop NaN (maxps returns its second operand).
inline uint32_t abs_bits(float x) {
  uint32_t b;
  __builtin_memcpy(&b, &x, 4);
  return b & 0x7fffffffu;
}
inline float float_from_bits(uint32_t b) {
  float f;
  __builtin_memcpy(&f, &b, 4);
  return f;
}
inline uint32_t max_bits(uint32_t a, uint32_t b) { return a > b ? a : b; }
// False for +-inf and NaN: a token whose max|x| (or scale) is not finite cannot be quantized.
inline bool int8_finite(float v) { return std::fabs(v) <= 3.40282347e38f; }

// A token with a NaN or an inf (int8_linear.h): q = 0 (stored as `zero`: 0, or 0x80 for u8
// activations) for all `stride` columns and scale = absmax / 127, NaN or +inf, which marks it.
inline void quantize_nonfinite_row(float absmax, int64_t stride, int8_t zero, int8_t* q, float* scale) {
  for (int64_t c = 0; c < stride; ++c) q[c] = zero;
  *scale = absmax / 127.f;
}

// Scalar per-token quantization (the statement every vector version must equal).
inline float int8_inverse_scale(float absmax) { return absmax > 0.f ? 127.f / absmax : 0.f; }
inline int8_t quantize_one(float x, float inv) {
  float v = x * inv;
  v = std::fmin(std::fmax(v, -127.f), 127.f);  // also maps NaN to -127: no UB on conversion
  return static_cast<int8_t>(std::nearbyint(v));
}

}  // namespace
}  // namespace sparseinfer
