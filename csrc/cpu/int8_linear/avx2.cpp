// AVX2 tier. W8A8 widens both operands to int16 and multiplies with vpmaddwd: exact, where
// vpmaddubsw (u8 x s8 summed in pairs into a *saturating* int16) would clip 255 * -128 * 2.
// Weight-only dequantizes 8 weights per vector in registers.
#include <immintrin.h>

#include "../simd/avx2.h"
#include "common.h"

namespace sparseinfer {
namespace {

template <DType DT>
__m256 load8_f32(const void* x, int64_t c) {
  if constexpr (DT == DType::f32) {
    return _mm256_loadu_ps(static_cast<const float*>(x) + c);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + c));
    if constexpr (DT == DType::bf16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else return _mm256_cvtph_ps(h);
  }
}

// Same bits as quantize_row_ref (see avx512_kernels.h for why); scalar for the tail.
template <DType DT>
void quantize_row_dt(const void* x, int64_t cols, int64_t stride, int8_t* q, float* scale) {
  // max|x| as a max over |x|'s bits (common.h: NaN and inf survive it).
  const __m256i sign = _mm256_set1_epi32(0x7fffffff);
  __m256i vmax = _mm256_setzero_si256();
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8)
    vmax = _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(load8_f32<DT>(x, c)), sign), vmax);
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), vmax);
  uint32_t bits = 0;
  for (uint32_t v : lanes) bits = max_bits(bits, v);
  for (; c < cols; ++c) bits = max_bits(bits, abs_bits(load_as_f32(DT, x, c)));
  const float absmax = float_from_bits(bits);
  if (!int8_finite(absmax)) return quantize_nonfinite_row(absmax, stride, 0, q, scale);
  const float inv_s = int8_inverse_scale(absmax);
  const __m256 inv = _mm256_set1_ps(inv_s);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  for (c = 0; c + 8 <= cols; c += 8) {
    __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(load8_f32<DT>(x, c), inv));
    v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + c), _mm_packs_epi16(w16, w16));
  }
  for (; c < cols; ++c) q[c] = quantize_one(load_as_f32(DT, x, c), inv_s);
  for (; c < stride; ++c) q[c] = 0;
  *scale = absmax / 127.f;
}

void quantize_row_avx2(DType dtype, const void* x, int64_t cols, int64_t stride, int8_t* q, float* scale) {
  switch (dtype) {
    case DType::f32: return quantize_row_dt<DType::f32>(x, cols, stride, q, scale);
    case DType::bf16: return quantize_row_dt<DType::bf16>(x, cols, stride, q, scale);
    case DType::f16: return quantize_row_dt<DType::f16>(x, cols, stride, q, scale);
  }
}

inline void store_rows16(const PackedInt8& w, int64_t rb, int64_t t, const float* v, const LinearOutput& out) {
  const int64_t r0 = rb * kInt8RowBlock;
  const int64_t nr = w.rows - r0 < kInt8RowBlock ? w.rows - r0 : kInt8RowBlock;
  store_block(w.rows, out, r0, nr, t, 1, v, 1, 1);
}

// W8A8, T tokens x 16 rows. A 64-byte line is 4 pieces of 4 rows x 4 columns; each piece widened
// to int16 meets the token's 4 columns (as int16, repeated 4 times) in vpmaddwd, giving every
// row's two column pairs side by side.
template <int T>
void dynamic_block(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t rb, const LinearOutput& out) {
  float sum[T][16] = {};
  const int8_t* line = w.qweight + int8_line(w, rb, 0);
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256i acc[T][4];
    for (int t = 0; t < T; ++t)
      for (int p = 0; p < 4; ++p) acc[t][p] = _mm256_setzero_si256();
    for (int64_t kq = group_begin(w, g) / 4; kq < group_end(w, g) / 4; ++kq) {
      __m256i wp[4];
      for (int p = 0; p < 4; ++p)
        wp[p] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(line + kq * 64 + 16 * p)));
      for (int t = 0; t < T; ++t) {
        int32_t xq;
        __builtin_memcpy(&xq, x.q + (t0 + t) * x.stride + kq * 4, 4);
        const __m256i xv = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(xq)));
        for (int p = 0; p < 4; ++p) acc[t][p] = _mm256_add_epi32(acc[t][p], _mm256_madd_epi16(wp[p], xv));
      }
    }
    const float* scale = w.scales + int8_group_cell(w, rb, g);
    for (int t = 0; t < T; ++t) {
      alignas(32) int32_t pairs[4][8];
      for (int p = 0; p < 4; ++p) _mm256_store_si256(reinterpret_cast<__m256i*>(pairs[p]), acc[t][p]);
      for (int r = 0; r < 16; ++r) {
        const int32_t dot = pairs[r / 4][2 * (r % 4)] + pairs[r / 4][2 * (r % 4) + 1];
        sum[t][r] = sum[t][r] + static_cast<float>(dot) * scale[r];
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    float v[16];
    for (int r = 0; r < 16; ++r) v[r] = sum[t][r] * x.scale[t0 + t];
    store_rows16(w, rb, t0 + t, v, out);
  }
}

void dynamic_rows_avx2(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t mt,
                       int64_t rb0, int64_t rb1, const LinearOutput& out) {
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    int64_t t = t0;
    for (; t + 2 <= t0 + mt; t += 2) dynamic_block<2>(w, x, t, rb, out);
    if (t < t0 + mt) dynamic_block<1>(w, x, t, rb, out);
  }
}

// Weight-only, one token x 16 rows: 8 pieces of 2 rows x 4 columns per line, against the token's
// 4 columns in both 128-bit halves; lanes are summed per row at the end.
template <bool GROUPED>
void weight_only_block(const PackedInt8& w, const float* x, int64_t t, int64_t rb, const LinearOutput& out) {
  __m256 acc[8];
  for (int p = 0; p < 8; ++p) acc[p] = _mm256_setzero_ps();
  const int8_t* line = w.qweight + int8_line(w, rb, 0);
  const float* xt = x + t * w.kp;
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256 srep[8];
    if constexpr (GROUPED) {
      const float* s = w.scales + int8_group_cell(w, rb, g);
      for (int p = 0; p < 8; ++p) srep[p] = _mm256_set_m128(_mm_set1_ps(s[2 * p + 1]), _mm_set1_ps(s[2 * p]));
    }
    for (int64_t kq = group_begin(w, g) / 4; kq < group_end(w, g) / 4; ++kq) {
      const __m256 xv = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xt + kq * 4));
      for (int p = 0; p < 8; ++p) {
        __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(line + kq * 64 + 8 * p))));
        if constexpr (GROUPED) wf = _mm256_mul_ps(wf, srep[p]);
        acc[p] = _mm256_fmadd_ps(wf, xv, acc[p]);
      }
    }
  }
  alignas(32) float lanes[8][8];
  for (int p = 0; p < 8; ++p) _mm256_store_ps(lanes[p], acc[p]);
  float v[16];
  const float* scale = w.scales + int8_group_cell(w, rb, 0);
  for (int r = 0; r < 16; ++r) {
    const float* l = lanes[r / 2] + 4 * (r % 2);
    v[r] = (l[0] + l[1]) + (l[2] + l[3]);
    if constexpr (!GROUPED) v[r] = v[r] * scale[r];
  }
  store_rows16(w, rb, t, v, out);
}

void weight_only_avx2(const PackedInt8& w, const float* x, int64_t t0, int64_t mt, int64_t rb0,
                      int64_t rb1, const LinearOutput& out) {
  for (int64_t rb = rb0; rb < rb1; ++rb)
    for (int64_t t = t0; t < t0 + mt; ++t) {
      if (w.groups == 1) weight_only_block<false>(w, x, t, rb, out);
      else weight_only_block<true>(w, x, t, rb, out);
    }
}

}  // namespace

const Int8Kernels int8_kernels_avx2 = {
    .isa = "avx2",
    .u8_acts = false,
    .quantize_row = quantize_row_avx2,
    .dynamic_rows = dynamic_rows_avx2,
    .rows_path = "avx2_rows",
    .dynamic_tiles = nullptr,
    .tiles_path = nullptr,
    .tiles_min_m = 0,
    .weight_only = weight_only_avx2,
};

}  // namespace sparseinfer
