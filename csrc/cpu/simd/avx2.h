// AVX2+FMA+F16C basics shared by every format's kernels: fp32 vector ops and loading
// fp32/bf16/fp16 weight values as fp32. Include only from files compiled with AVX2 flags.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "sparseinfer/dtype.h"

namespace sparseinfer {
namespace {

struct Avx2Base {
  using V = __m256;
  static constexpr int L = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static float reduce(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // 8 consecutive values as fp32.
  template <DType DT>
  static V load_vals(const void* vals, int64_t off) {
    if constexpr (DT == DType::f32) {
      return _mm256_loadu_ps(static_cast<const float*>(vals) + off);
    } else {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(vals) + off));
      if constexpr (DT == DType::bf16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      else
        return _mm256_cvtph_ps(h);
    }
  }
  template <DType DT>
  static V bcast_val(const void* vals, int64_t off) {
    if constexpr (DT == DType::f32) {
      return _mm256_set1_ps(static_cast<const float*>(vals)[off]);
    } else {
      uint16_t h = static_cast<const uint16_t*>(vals)[off];
      if constexpr (DT == DType::bf16)
        return _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(uint32_t(h) << 16)));
      else
        return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
    }
  }
};

}  // namespace
}  // namespace sparseinfer
