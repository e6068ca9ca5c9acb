// AVX2+FMA+F16C CSR kernels: a permutation table expands 8-column bitmask chunks, vgatherdps
// serves the u8-index path, 8 tokens per ymm in the token path.
#include <immintrin.h>

#include <array>
#include <cstring>

#include "../simd/avx2.h"
#include "common.h"

namespace sparseinfer {
namespace {

// For an 8-bit mask: lane j takes the value at position popcount(mask & ((1 << j) - 1)); lanes
// whose bit is clear hold -1, whose sign bit blends them to zero (vpermps reads the low 3 bits).
constexpr std::array<std::array<int32_t, 8>, 256> make_expand_table() {
  std::array<std::array<int32_t, 8>, 256> t{};
  for (int m = 0; m < 256; ++m) {
    int pos = 0;
    for (int j = 0; j < 8; ++j) t[m][j] = (m >> j & 1) ? pos++ : -1;
  }
  return t;
}
alignas(64) constexpr auto kExpandTable = make_expand_table();
alignas(32) constexpr int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct Simd : Avx2Base {
  static __m256 tail(int n) {
    return _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - n)));
  }
  template <DType DT>
  static V load_vals_tail(const void* vals, int64_t off, int n) {
    return _mm256_and_ps(load_vals<DT>(vals, off), tail(n));
  }
  static V gather_tail(const float* base, const uint8_t* idx, int n) {
    __m256i iv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(idx)));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, iv, tail(n), 4);
  }
  struct Panel {
    const float* xp;
  };
  static Panel load_panel(const float* xp) { return {xp}; }
  // m = 1: eight scalar loads put together with inserts, about 1.5x vgatherdps's speed on Zen 4
  // (7 vs 11 cycles per 8 lanes measured). Lanes >= n read whatever index bytes follow (inside
  // the values' padding; any byte stays inside x, padded by a panel) and are zeroed: an inf
  // there must not meet their zero value.
  static V gather_panel(const Panel& p, const uint8_t* idx, int n) {
    uint64_t ix;
    std::memcpy(&ix, idx, 8);
    const float* x = p.xp;
    __m128 lo = _mm_load_ss(x + (ix & 0xff));
    lo = _mm_insert_ps(lo, _mm_load_ss(x + (ix >> 8 & 0xff)), 0x10);
    lo = _mm_insert_ps(lo, _mm_load_ss(x + (ix >> 16 & 0xff)), 0x20);
    lo = _mm_insert_ps(lo, _mm_load_ss(x + (ix >> 24 & 0xff)), 0x30);
    __m128 hi = _mm_load_ss(x + (ix >> 32 & 0xff));
    hi = _mm_insert_ps(hi, _mm_load_ss(x + (ix >> 40 & 0xff)), 0x10);
    hi = _mm_insert_ps(hi, _mm_load_ss(x + (ix >> 48 & 0xff)), 0x20);
    hi = _mm_insert_ps(hi, _mm_load_ss(x + (ix >> 56)), 0x30);
    const V v = _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
    return _mm256_and_ps(v, tail(n));  // always: a branch on n mispredicts
  }
  static V expand8(V v, unsigned m8) {
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpandTable[m8].data()));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(v, perm), _mm256_setzero_ps(), _mm256_castsi256_ps(perm));
  }
  template <DType DT>
  static void expand16(const void* vals, int64_t off, uint16_t word, V* out) {
    unsigned lo = word & 0xffu, hi = word >> 8;
    out[0] = expand8(load_vals<DT>(vals, off), lo);
    out[1] = expand8(load_vals<DT>(vals, off + __builtin_popcount(lo)), hi);
  }
};

#include "simd_kernels.h"

// m = 1 streams each panel across the task's rows (rows_*_streaming); more tokens share each
// weight read in groups of up to 4 (rows_gather, rows_expand).
void rows_streaming(bool expand, const PackedCsr& w, const float* x, int64_t b0, int64_t b1,
                    const LinearOutput& out) {
  switch (w.dtype) {
    case DType::f32:
      return expand ? rows_expand_streaming<DType::f32>(w, x, b0, b1, out)
                    : rows_gather_streaming<DType::f32>(w, x, b0, b1, out);
    case DType::bf16:
      return expand ? rows_expand_streaming<DType::bf16>(w, x, b0, b1, out)
                    : rows_gather_streaming<DType::bf16>(w, x, b0, b1, out);
    case DType::f16:
      return expand ? rows_expand_streaming<DType::f16>(w, x, b0, b1, out)
                    : rows_gather_streaming<DType::f16>(w, x, b0, b1, out);
  }
}

void rows_gather_avx2(const PackedCsr& w, const float* x, int64_t xs, int64_t m, int64_t b0,
                      int64_t b1, const LinearOutput& out) {
  if (m == 1) return rows_streaming(false, w, x, b0, b1, out);
  rows_gather(w, x, xs, m, b0, b1, out);
}

void rows_expand_avx2(const PackedCsr& w, const float* x, int64_t xs, int64_t m, int64_t b0,
                      int64_t b1, const LinearOutput& out) {
  if (m == 1) return rows_streaming(true, w, x, b0, b1, out);
  rows_expand(w, x, xs, m, b0, b1, out);
}

}  // namespace

const CsrKernels csr_kernels_avx2 = {"avx2", 8, 4, rows_gather_avx2, rows_expand_avx2, tokens};

}  // namespace sparseinfer
