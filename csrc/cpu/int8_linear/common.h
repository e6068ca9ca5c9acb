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

// Scalar per-token quantization (the statement every vector version must equal).
inline float int8_inverse_scale(float absmax) { return absmax > 0.f ? 127.f / absmax : 0.f; }
inline int8_t quantize_one(float x, float inv) {
  float v = x * inv;
  v = std::fmin(std::fmax(v, -127.f), 127.f);  // also maps NaN to -127: no UB on conversion
  return static_cast<int8_t>(std::nearbyint(v));
}

}  // namespace
}  // namespace sparseinfer
