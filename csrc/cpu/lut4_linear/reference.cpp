// Scalar lut4 kernels: the portable tier and the plainest statement of the layout and the math
// (lut4_linear.h).
#include "common.h"

namespace sparseinfer {
namespace {

void dynamic_ref(const PackedLut4& w, const Lut4QuantActs& x, int64_t m, int64_t rb0, int64_t rb1,
                 const LinearOutput& out) {
  const int64_t r1 = rb1 * kLut4RowBlock < w.rows ? rb1 * kLut4RowBlock : w.rows;
  for (int64_t t = 0; t < m; ++t) {
    const int8_t* q = x.q + t * w.kp;
    for (int64_t r = rb0 * kLut4RowBlock; r < r1; ++r) {
      float sum = 0.f, corr = 0.f;
      for (int64_t g = 0; g < w.groups; ++g) {
        const int64_t k0 = w.groups == 1 ? 0 : g * w.group_size;
        const int64_t k1 = w.groups == 1 || g + 1 == w.groups ? w.kp : k0 + w.group_size;
        int32_t dot = 0;
        for (int64_t k = k0; k < k1; ++k) dot += int32_t(q[k]) * lut4_level(w, r, g, lut4_index(w, r, k));
        sum += lut4_scale(w, r, g) * static_cast<float>(dot);
        corr += lut4_offset(w, r, g) * x.xsum[t * w.groups + g];
      }
      const float v = x.scale[t] * (sum - corr);
      store_block(w.rows, out, r, 1, t, 1, &v, 1, 1);
    }
  }
}

void weight_only_ref(const PackedLut4& w, const Lut4FloatActs& x, int64_t m, int64_t rb0, int64_t rb1,
                     const LinearOutput& out) {
  const int64_t r1 = rb1 * kLut4RowBlock < w.rows ? rb1 * kLut4RowBlock : w.rows;
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x.x + t * w.kp;
    for (int64_t r = rb0 * kLut4RowBlock; r < r1; ++r) {
      double sum = 0.0;  // one long sequential sum: double keeps it as accurate as the vector tiers
      for (int64_t k = 0; k < w.cols; ++k) sum += double(lut4_float_weight(w, r, k)) * xt[k];
      const float v = static_cast<float>(sum);
      store_block(w.rows, out, r, 1, t, 1, &v, 1, 1);
    }
  }
}

}  // namespace

const Lut4Kernels lut4_kernels_reference = {
    .isa = "reference",
    .dynamic = dynamic_ref,
    .weight_only = weight_only_ref,
};

}  // namespace sparseinfer
