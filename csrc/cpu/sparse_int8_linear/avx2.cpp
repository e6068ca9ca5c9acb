// AVX2 tier. W8A8: one 256-bit load of a window pair's quantized activations, `vpshufb` gathers
// every slot's activation inside its 128-bit half, `vpsignb` moves the weight's sign onto it and
// `vpmaddubsw` multiplies |w| (u8, <= 128) by it (|pair sum| <= 2 * 128 * 127: never saturates);
// one `vpmaddwd` against ones sums 4 slots of one row per int32 lane (lanes 0, 1, 4, 5: row A).
// Weight-only: the same gather in fp32 with `vpermps` over a window's 16 floats.
#include <immintrin.h>

#include "common.h"

namespace sparseinfer {
namespace {

// Steps ahead the streams are prefetched (2 KB of values): the hardware prefetchers alone left
// the m = 1 kernel short of the bandwidth dense int8 reaches.
constexpr int64_t kPrefetchSteps = 64;

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// f(step, window pair) for the steps of group g of pair p, in order; `s` is the pair's running
// step index (the uniform layout has exactly one step per window pair and reads no step_wp).
template <bool kUniform, class F>
inline void for_each_step(const PackedSparseInt8& w, int64_t p, int64_t g, int64_t& s, F&& f) {
  const int64_t wp0 = spi8_group_begin(w, g), wp1 = spi8_group_end(w, g);
  if constexpr (kUniform) {
    for (int64_t wp = wp0; wp < wp1; ++wp, ++s) f(s, wp);
  } else {
    const int64_t s1 = w.pair_steps[p + 1];
    for (int64_t wp; s < s1 && (wp = w.step_wp[s]) < wp1; ++s) f(s, wp);
  }
}

inline void prefetch_step(const PackedSparseInt8& w, int64_t s) {
  _mm_prefetch(reinterpret_cast<const char*>(w.values + (s + kPrefetchSteps) * 32), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(w.idx + (s + kPrefetchSteps) * 16), _MM_HINT_T0);
}

// W8A8 over tokens [t0, t0 + T) of one row pair.
template <bool kUniform, int T>
void dynamic_pair(const PackedSparseInt8& w, const SpI8QuantActs& x, int64_t t0, int64_t p, const LinearOutput& out) {
  const __m256i shifts = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
  const __m256i low4 = _mm256_set1_epi8(15);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i row_b = _mm256_setr_epi32(0, 0, -1, -1, 0, 0, -1, -1);
  const int8_t* q[T];
  for (int t = 0; t < T; ++t) q[t] = x.q + (t0 + t) * w.kp;
  float sum[T][2] = {};
  int64_t s = w.pair_steps[p];
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256i acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_si256();
    for_each_step<kUniform>(w, p, g, s, [&](int64_t step, int64_t wp) {
      prefetch_step(w, step);
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + step * 32));
      const __m256i wabs = _mm256_abs_epi8(wv);
      const __m256i ib = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.idx + step * 16)));
      const __m256i id = _mm256_and_si256(_mm256_srlv_epi32(ib, shifts), low4);
      for (int t = 0; t < T; ++t) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[t] + wp * 32));
        const __m256i prod = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(_mm256_shuffle_epi8(xv, id), wv));
        acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(prod, ones));
      }
    });
    const float sa = spi8_scale(w, 2 * p, g), sb = spi8_scale(w, 2 * p + 1, g);
    for (int t = 0; t < T; ++t) {
      const int32_t total = hsum_epi32(acc[t]), dot_b = hsum_epi32(_mm256_and_si256(acc[t], row_b));
      sum[t][0] = sum[t][0] + static_cast<float>(total - dot_b) * sa;
      sum[t][1] = sum[t][1] + static_cast<float>(dot_b) * sb;
    }
  }
  for (int t = 0; t < T; ++t) {
    const float scale_x = x.scale[t0 + t];
    spi8_store_pair(w, p, t0 + t, sum[t][0] * scale_x, sum[t][1] * scale_x, out);
  }
}

template <bool kUniform>
void dynamic_pairs(const PackedSparseInt8& w, const SpI8QuantActs& x, int64_t m, int64_t p0, int64_t p1,
                   const LinearOutput& out) {
  for (int64_t p = p0; p < p1; ++p) {
    int64_t t = 0;
    for (; t + 4 <= m; t += 4) dynamic_pair<kUniform, 4>(w, x, t, p, out);
    switch (m - t) {
      case 3: dynamic_pair<kUniform, 3>(w, x, t, p, out); break;
      case 2: dynamic_pair<kUniform, 2>(w, x, t, p, out); break;
      case 1: dynamic_pair<kUniform, 1>(w, x, t, p, out); break;
      default: break;
    }
  }
}

void dynamic_avx2(const PackedSparseInt8& w, const SpI8QuantActs& x, int64_t m, int64_t p0, int64_t p1,
                  const LinearOutput& out) {
  if (w.uniform) dynamic_pairs<true>(w, x, m, p0, p1, out);
  else dynamic_pairs<false>(w, x, m, p0, p1, out);
}

// Weight-only over tokens [t0, t0 + T) of one row pair. Chunk c of a step is 8 slots of half
// c / 2, of row A (c even) or B (c odd).
template <bool kUniform, int T>
void weight_only_pair(const PackedSparseInt8& w, const float* x, int64_t t0, int64_t p, const LinearOutput& out) {
  const __m256i low4 = _mm256_set1_epi32(15);
  double sum[T][2] = {};
  int64_t s = w.pair_steps[p];
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256 acc[T][2];
    for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for_each_step<kUniform>(w, p, g, s, [&](int64_t step, int64_t wp) {
      prefetch_step(w, step);
      for (int c = 0; c < 4; ++c) {
        const int h = c / 2, row = c % 2;
        __m256i id = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.idx + step * 16 + 8 * row)));
        id = _mm256_and_si256(h ? _mm256_srli_epi32(id, 4) : id, low4);
        const __m256 hi = _mm256_castsi256_ps(_mm256_slli_epi32(id, 28));
        const __m256 wf = _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.values + step * 32 + 16 * h + 8 * row))));
        // The activations are masked, not the weights: x at a padding slot must not meet its
        // zero weight (an inf would turn into NaN).
        const __m256 stored = _mm256_cmp_ps(wf, _mm256_setzero_ps(), _CMP_NEQ_UQ);
        for (int t = 0; t < T; ++t) {
          const float* xw = x + (t0 + t) * w.kp + wp * 32 + 16 * h;
          const __m256 xg = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xw), id),
                                             _mm256_permutevar8x32_ps(_mm256_loadu_ps(xw + 8), id), hi);
          acc[t][row] = _mm256_fmadd_ps(wf, _mm256_and_ps(xg, stored), acc[t][row]);
        }
      }
    });
    const double sa = spi8_scale(w, 2 * p, g), sb = spi8_scale(w, 2 * p + 1, g);
    for (int t = 0; t < T; ++t) {
      sum[t][0] += double(hsum_ps(acc[t][0])) * sa;
      sum[t][1] += double(hsum_ps(acc[t][1])) * sb;
    }
  }
  for (int t = 0; t < T; ++t)
    spi8_store_pair(w, p, t0 + t, static_cast<float>(sum[t][0]), static_cast<float>(sum[t][1]), out);
}

template <bool kUniform>
void weight_only_pairs(const PackedSparseInt8& w, const float* x, int64_t m, int64_t p0, int64_t p1,
                       const LinearOutput& out) {
  for (int64_t p = p0; p < p1; ++p) {
    int64_t t = 0;
    for (; t + 4 <= m; t += 4) weight_only_pair<kUniform, 4>(w, x, t, p, out);
    switch (m - t) {
      case 3: weight_only_pair<kUniform, 3>(w, x, t, p, out); break;
      case 2: weight_only_pair<kUniform, 2>(w, x, t, p, out); break;
      case 1: weight_only_pair<kUniform, 1>(w, x, t, p, out); break;
      default: break;
    }
  }
}

void weight_only_avx2(const PackedSparseInt8& w, const float* x, int64_t m, int64_t p0, int64_t p1,
                      const LinearOutput& out) {
  if (w.uniform) weight_only_pairs<true>(w, x, m, p0, p1, out);
  else weight_only_pairs<false>(w, x, m, p0, p1, out);
}

}  // namespace

const SpI8Kernels spi8_kernels_avx2 = {
    .isa = "avx2",
    .dynamic = dynamic_avx2,
    .weight_only = weight_only_avx2,
};

}  // namespace sparseinfer
