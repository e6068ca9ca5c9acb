// Small fp32 ops of the Llama decode loop (sparseinfer.generate) that torch runs as several ops
// each: RMSNorm and rotary embedding. At batch 1 each is a few thousand values, so one native pass
// saves the per-op dispatch of torch (several microseconds an op, tens of ops a layer).
#pragma once
#include <cstdint>

namespace sparseinfer {

// y[r][c] = x[r][c] * (1 / sqrt(mean_c(x[r][c]^2) + eps)) * w[c]; the mean is summed in double.
void rms_norm_f32(const float* x, const float* w, float* y, int64_t rows, int64_t cols, float eps);

// Rotary embedding in place of torch's x * cos + rotate_half(x) * sin on x [tokens][heads][dim]
// with cos / sin [tokens][dim]; rotate_half(x) = cat(-x[dim/2:], x[:dim/2]). Each product and the
// sum are rounded separately (no fused multiply-add), so the result equals torch's bit for bit.
void rope_f32(const float* x, const float* cos, const float* sin, float* y, int64_t tokens, int64_t heads,
              int64_t dim);

}  // namespace sparseinfer
