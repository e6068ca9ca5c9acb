// Scalar int8 kernels: the portable tier (any CPU) and the plainest statement of the layout and
// of the epilogue order (int8_linear.h).
#include "common.h"

namespace sparseinfer {
namespace {

void dynamic_ref(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t mt, int64_t rb0,
                 int64_t rb1, const LinearOutput& out) {
  const int64_t r1 = std::min(w.rows, rb1 * kInt8RowBlock);
  for (int64_t t = t0; t < t0 + mt; ++t) {
    const int8_t* q = x.q + t * x.stride;
    for (int64_t r = rb0 * kInt8RowBlock; r < r1; ++r) {
      float sum = 0.f;
      for (int64_t g = 0; g < w.groups; ++g) {
        int32_t dot = 0;
        for (int64_t k = group_begin(w, g); k < group_end(w, g); ++k) dot += int32_t(q[k]) * weight_at(w, r, k);
        sum = sum + static_cast<float>(dot) * w.scales[int8_group_cell(w, r / kInt8RowBlock, g) + r % kInt8RowBlock];
      }
      const float v = sum * x.scale[t];
      store_block(w.rows, out, r, 1, t, 1, &v, 1, 1);
    }
  }
}

void weight_only_ref(const PackedInt8& w, const float* x, int64_t t0, int64_t mt, int64_t rb0,
                     int64_t rb1, const LinearOutput& out) {
  const int64_t r1 = std::min(w.rows, rb1 * kInt8RowBlock);
  for (int64_t t = t0; t < t0 + mt; ++t) {
    const float* xt = x + t * w.kp;
    for (int64_t r = rb0 * kInt8RowBlock; r < r1; ++r) {
      double sum = 0.0;  // one long sequential sum: double keeps it as accurate as the vector tiers
      for (int64_t g = 0; g < w.groups; ++g) {
        double part = 0.0;
        for (int64_t k = group_begin(w, g); k < group_end(w, g); ++k) part += double(weight_at(w, r, k)) * xt[k];
        sum += part * w.scales[int8_group_cell(w, r / kInt8RowBlock, g) + r % kInt8RowBlock];
      }
      const float v = static_cast<float>(sum);
      store_block(w.rows, out, r, 1, t, 1, &v, 1, 1);
    }
  }
}

void quantize_row_ref(DType dtype, const void* x, int64_t cols, int64_t stride, int8_t* q, float* scale) {
  uint32_t bits = 0;
  for (int64_t c = 0; c < cols; ++c) bits = max_bits(bits, abs_bits(load_as_f32(dtype, x, c)));
  const float absmax = float_from_bits(bits);
  if (!int8_finite(absmax)) return quantize_nonfinite_row(absmax, stride, 0, q, scale);
  const float inv = int8_inverse_scale(absmax);
  for (int64_t c = 0; c < cols; ++c) q[c] = quantize_one(load_as_f32(dtype, x, c), inv);
  for (int64_t c = cols; c < stride; ++c) q[c] = 0;
  *scale = absmax / 127.f;
}

}  // namespace

const Int8Kernels int8_kernels_reference = {
    .isa = "reference",
    .u8_acts = false,
    .quantize_row = quantize_row_ref,
    .dynamic_rows = dynamic_ref,
    .rows_path = "reference",
    .dynamic_tiles = nullptr,
    .tiles_path = nullptr,
    .tiles_min_m = 0,
    .weight_only = weight_only_ref,
    .weight_only_tiles_min_m = 0,
};

}  // namespace sparseinfer
