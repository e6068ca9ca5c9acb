// Scalar (compiler-vectorised) fp32 decode-loop ops; see decode_ops.h. Built with baseline flags
// and -ffp-contract=off (rope must round like torch).
#include "sparseinfer/decode_ops.h"

#include <cmath>

namespace sparseinfer {

void rms_norm_f32(const float* x, const float* w, float* y, int64_t rows, int64_t cols, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    double sum = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum += double(xr[c]) * xr[c];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum / double(cols > 0 ? cols : 1) + double(eps)));
    float* yr = y + r * cols;
    for (int64_t c = 0; c < cols; ++c) yr[c] = (xr[c] * inv) * w[c];
  }
}

void rope_f32(const float* x, const float* cos, const float* sin, float* y, int64_t tokens, int64_t heads,
              int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = cos + t * dim;
    const float* s = sin + t * dim;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xv = x + (t * heads + h) * dim;
      float* yv = y + (t * heads + h) * dim;
      for (int64_t j = 0; j < half; ++j) {
        const float a = xv[j] * c[j], b = (-xv[j + half]) * s[j];
        yv[j] = a + b;
      }
      for (int64_t j = half; j < dim; ++j) {
        const float a = xv[j] * c[j], b = xv[j - half] * s[j];
        yv[j] = a + b;
      }
    }
  }
}

}  // namespace sparseinfer
