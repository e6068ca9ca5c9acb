// AVX-512 (F/BW/VL/DQ) basics shared by every format's kernels: fp32 vector ops and loading
// fp32/bf16/fp16 weight values as fp32. Include only from files compiled with AVX-512 flags.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "sparseinfer/dtype.h"

namespace sparseinfer {
namespace {

struct Avx512Base {
  using V = __m512;
  static constexpr int L = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static float reduce(V a) { return _mm512_reduce_add_ps(a); }
  static __mmask16 tail(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

  template <DType DT>
  static V widen(__m256i h) {
    if constexpr (DT == DType::bf16)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else
      return _mm512_cvtph_ps(h);
  }
  // 16 consecutive values as fp32.
  template <DType DT>
  static V load_vals(const void* vals, int64_t off) {
    if constexpr (DT == DType::f32)
      return _mm512_loadu_ps(static_cast<const float*>(vals) + off);
    else
      return widen<DT>(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(vals) + off)));
  }
  template <DType DT>
  static V bcast_val(const void* vals, int64_t off) {
    if constexpr (DT == DType::f32) {
      return _mm512_set1_ps(static_cast<const float*>(vals)[off]);
    } else {
      uint16_t h = static_cast<const uint16_t*>(vals)[off];
      if constexpr (DT == DType::bf16)
        return _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(uint32_t(h) << 16)));
      else
        return _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(h)));
    }
  }
};

}  // namespace
}  // namespace sparseinfer
