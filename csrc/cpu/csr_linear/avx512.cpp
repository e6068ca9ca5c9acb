// AVX-512 (F/BW/VL/DQ) CSR kernels: vexpandps for the m<8 bitmask path, vgatherdps for the
// u8-index path, 16 tokens per zmm in the token path.
#include <immintrin.h>

#include <cstring>

#include "../simd/avx512.h"
#include "common.h"

namespace sparseinfer {
namespace {

struct Simd : Avx512Base {
  template <DType DT>
  static V load_vals_tail(const void* vals, int64_t off, int n) {
    if constexpr (DT == DType::f32)
      return _mm512_maskz_loadu_ps(tail(n), static_cast<const float*>(vals) + off);
    else
      return widen<DT>(_mm256_maskz_loadu_epi16(tail(n), static_cast<const uint16_t*>(vals) + off));
  }
  static V gather_tail(const float* base, const uint8_t* idx, int n) {
    __m512i iv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), tail(n), iv, base, 4);
  }
  // A 128-column x panel lives in 8 registers; "gathering" from it is 4 two-table permutes
  // and a select on index bits 5 and 6 (much cheaper than vgatherdps).
  struct Panel {
    V q[8];
  };
  static Panel load_panel(const float* xp) {
    Panel p;
    for (int i = 0; i < 8; ++i) p.q[i] = _mm512_loadu_ps(xp + 16 * i);
    return p;
  }
  static V gather_panel(const Panel& p, const uint8_t* idx, int n) {
    __m512i iv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx)));
    V r0 = _mm512_permutex2var_ps(p.q[0], iv, p.q[1]);
    V r1 = _mm512_permutex2var_ps(p.q[2], iv, p.q[3]);
    V r2 = _mm512_permutex2var_ps(p.q[4], iv, p.q[5]);
    V r3 = _mm512_permutex2var_ps(p.q[6], iv, p.q[7]);
    __mmask16 b5 = _mm512_test_epi32_mask(iv, _mm512_set1_epi32(32));
    __mmask16 b6 = _mm512_test_epi32_mask(iv, _mm512_set1_epi32(64));
    V lo = _mm512_mask_blend_ps(b5, r0, r1);
    V hi = _mm512_mask_blend_ps(b5, r2, r3);
    return _mm512_maskz_mov_ps(tail(n), _mm512_mask_blend_ps(b6, lo, hi));
  }
  template <DType DT>
  static void expand16(const void* vals, int64_t off, uint16_t word, V* out) {
    out[0] = _mm512_maskz_expand_ps(word, load_vals<DT>(vals, off));
  }
};

#include "simd_kernels.h"

}  // namespace

const CsrKernels csr_kernels_avx512 = {"avx512", 16, 4, rows_gather, rows_expand, tokens};

}  // namespace sparseinfer
