// AVX2 tier. W8A8-style path: a 32-byte chunk row gives 64 indices with one AND and one shift;
// codebook levels come from a vpshufb of the row's 16-byte table; u8 levels x s8 activations
// meet in vpmaddubsw. int4 levels (<= 15) let 8 of those int16 pair sums add up before they
// widen (8 * 2 * 15 * 127 < 2^15); codebook levels (<= 127) widen at once (2 * 127 * 127 < 2^15).
// Weight-only: indices widened to fp32 (int4) or looked up in the fp32 table (vpermps).
#include <immintrin.h>

#include "common.h"
#include "sparseinfer/scratch.h"

namespace sparseinfer {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 4 rows' offsets of group g: scale * zero (int4) or the codebook's offsets.
inline __m128 offsets4(const PackedLut4& w, int64_t rb, int64_t g) {
  const int64_t cell = lut4_cell(w, rb, g);
  if (!w.zeros) return _mm_loadu_ps(w.offsets + cell);
  int32_t z;
  __builtin_memcpy(&z, w.zeros + cell, 4);
  return _mm_mul_ps(_mm_loadu_ps(w.scales + cell), _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(z))));
}

// y for R rows x T tokens from per-(token, row) sums: scale_x * (sum - offsets . xsum).
template <int T>
void finish_block(const PackedLut4& w, const float* xscale, const float* xsum, int64_t t0, int64_t rb,
                  const float (&sums)[T][kLut4RowBlock], const LinearOutput& out) {
  const int64_t r0 = rb * kLut4RowBlock;
  const int64_t nr = w.rows - r0 < kLut4RowBlock ? w.rows - r0 : kLut4RowBlock;
  for (int t = 0; t < T; ++t) {
    __m128 corr = _mm_setzero_ps();
    const float* xs = xsum + (t0 + t) * w.groups;
    for (int64_t g = 0; g < w.groups; ++g)
      corr = _mm_add_ps(corr, _mm_mul_ps(offsets4(w, rb, g), _mm_set1_ps(xs[g])));
    const __m128 v = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(sums[t]), corr), _mm_set1_ps(xscale[t0 + t]));
    float y[kLut4RowBlock];
    _mm_storeu_ps(y, v);
    store_block(w.rows, out, r0, nr, t0 + t, 1, y, 1, 1);
  }
}

// Index vector of the 32 columns [col, col + 32) of a row's chunk (col a multiple of 32).
inline __m256i indices32(const uint8_t* chunk_row, int64_t col) {
  const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk_row));
  const __m256i low = _mm256_set1_epi8(0x0F);
  return (col & 32) ? _mm256_and_si256(_mm256_srli_epi16(packed, 4), low) : _mm256_and_si256(packed, low);
}

// Column stretches: each group, cut (int4) into pieces of at most 256 columns so that int16
// pair sums cannot overflow. body(g, c0, c1) per stretch, in column order.
template <class F>
inline void for_stretches(const PackedLut4& w, int64_t max_width, F&& body) {
  const int64_t width = lut4_group_width(w);
  for (int64_t g = 0; g < w.groups; ++g) {
    const int64_t g0 = g * width, g1 = g0 + width < w.kp ? g0 + width : w.kp;
    for (int64_t c0 = g0; c0 < g1; c0 += max_width) body(g, c0, c0 + max_width < g1 ? c0 + max_width : g1);
  }
}

// W8A8-style: T tokens x the 4 rows of row block rb. part holds int16 pair sums (int4) or int32
// sums (codebook) of a stretch, which then goes into the fp32 lanes times the group's scale.
template <bool LUT, int T>
void dynamic_block(const PackedLut4& w, const Lut4QuantActs& x, int64_t t0, int64_t rb, const LinearOutput& out) {
  constexpr int R = kLut4RowBlock;
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
  __m256 acc[T][R];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = _mm256_setzero_ps();
  const int8_t* xq = x.q + t0 * w.kp;
  for_stretches(w, LUT ? w.kp : 256, [&](int64_t g, int64_t c0, int64_t c1) {
    __m256i part[T][R];
    for (int t = 0; t < T; ++t)
      for (int r = 0; r < R; ++r) part[t][r] = _mm256_setzero_si256();
    const uint8_t* levels = LUT ? w.levels + (rb * R * w.groups + g) * 16 : nullptr;
    // one half (32 columns at `col`) of the chunk at `chunk`: high nibbles if `high`
    auto half = [&](const uint8_t* chunk, bool high, int64_t col) __attribute__((always_inline)) {
      __m256i xv[T];
      for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * w.kp + col));
      for (int r = 0; r < R; ++r) {
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 32 * r));
        __m256i lv = _mm256_and_si256(high ? _mm256_srli_epi16(packed, 4) : packed, low);
        if constexpr (LUT) {
          const __m128i tab = _mm_loadu_si128(reinterpret_cast<const __m128i*>(levels + r * w.groups * 16));
          lv = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(tab), lv);
        }
        for (int t = 0; t < T; ++t) {
          const __m256i p = _mm256_maddubs_epi16(lv, xv[t]);
          if constexpr (LUT) part[t][r] = _mm256_add_epi32(part[t][r], _mm256_madd_epi16(p, ones));
          else part[t][r] = _mm256_add_epi16(part[t][r], p);
        }
      }
    };
    const uint8_t* chunk = lut4_chunk(w, rb, c0 / kLut4Chunk);
    int64_t col = c0;
    if (col & 32) half(chunk, true, col), col += 32, chunk += 32 * R;  // a stretch starting mid-chunk
    for (; col + kLut4Chunk <= c1; col += kLut4Chunk, chunk += 32 * R) {
      half(chunk, false, col);
      half(chunk, true, col + 32);
    }
    if (col < c1) half(chunk, false, col);  // a stretch ending mid-chunk
    const float* s = w.scales + lut4_cell(w, rb, g);
    for (int r = 0; r < R; ++r) {
      const __m256 sv = _mm256_broadcast_ss(s + r);
      for (int t = 0; t < T; ++t) {
        const __m256i d = LUT ? part[t][r] : _mm256_madd_epi16(part[t][r], ones);
        acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), sv, acc[t][r]);
      }
    }
  });
  float sums[T][R];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) sums[t][r] = hsum(acc[t][r]);
  finish_block<T>(w, x.scale, x.xsum, t0, rb, sums, out);
}

template <bool LUT>
void dynamic_rows(const PackedLut4& w, const Lut4QuantActs& x, int64_t m, int64_t rb0, int64_t rb1,
                  const LinearOutput& out) {
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    int64_t t = 0;
    for (; t + 2 <= m; t += 2) dynamic_block<LUT, 2>(w, x, t, rb, out);
    if (t < m) dynamic_block<LUT, 1>(w, x, t, rb, out);
  }
}

void dynamic_avx2(const PackedLut4& w, const Lut4QuantActs& x, int64_t m, int64_t rb0, int64_t rb1,
                  const LinearOutput& out) {
  if (w.levels) dynamic_rows<true>(w, x, m, rb0, rb1, out);
  else dynamic_rows<false>(w, x, m, rb0, rb1, out);
}

// 8 indices (bytes) -> 8 fp32 weights (before the group's scale): index - zero (int4, exact in
// integers, so no cancellation against an offset term) or table[index] (codebook).
template <bool TABLE>
inline __m256 weights8(__m128i idx8, __m256 tab_lo, __m256 tab_hi, __m256i zero) {
  const __m256i i32 = _mm256_cvtepu8_epi32(idx8);
  if constexpr (TABLE) {
    const __m256 lo = _mm256_permutevar8x32_ps(tab_lo, i32), hi = _mm256_permutevar8x32_ps(tab_hi, i32);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(i32, 28)));
  } else {
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(i32, zero));
  }
}

// Weight-only: one token x the 4 rows of row block rb.
template <bool TABLE>
void float_block(const PackedLut4& w, const Lut4FloatActs& x, int64_t t, int64_t rb, const LinearOutput& out) {
  constexpr int R = kLut4RowBlock;
  const float* xt = x.x + t * w.kp;
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for_stretches(w, w.kp, [&](int64_t g, int64_t c0, int64_t c1) {
    __m256 seg[R], tab_lo[R], tab_hi[R];
    __m256i zero[R];
    const uint8_t* zeros = TABLE ? nullptr : w.zeros + lut4_cell(w, rb, g);  // int4: w = scale * (index - zero)
    for (int r = 0; r < R; ++r) {
      seg[r] = _mm256_setzero_ps();
      tab_lo[r] = tab_hi[r] = _mm256_setzero_ps();
      zero[r] = _mm256_set1_epi32(TABLE ? 0 : zeros[r]);
      if constexpr (TABLE) {
        const float* tab = w.table + ((rb * R + r) * w.groups + g) * 16;
        tab_lo[r] = _mm256_loadu_ps(tab);
        tab_hi[r] = _mm256_loadu_ps(tab + 8);
      }
    }
    for (int64_t col = c0; col < c1; col += 32) {
      const uint8_t* chunk = lut4_chunk(w, rb, col / kLut4Chunk);
      const float* xc = xt + col;
      const __m256 x0 = _mm256_loadu_ps(xc), x1 = _mm256_loadu_ps(xc + 8), x2 = _mm256_loadu_ps(xc + 16),
                   x3 = _mm256_loadu_ps(xc + 24);
      for (int r = 0; r < R; ++r) {
        const __m256i idx = indices32(chunk + 32 * r, col);
        const __m128i i0 = _mm256_castsi256_si128(idx), i1 = _mm256_extracti128_si256(idx, 1);
        __m256 s = _mm256_mul_ps(weights8<TABLE>(i0, tab_lo[r], tab_hi[r], zero[r]), x0);
        s = _mm256_fmadd_ps(weights8<TABLE>(_mm_srli_si128(i0, 8), tab_lo[r], tab_hi[r], zero[r]), x1, s);
        s = _mm256_fmadd_ps(weights8<TABLE>(i1, tab_lo[r], tab_hi[r], zero[r]), x2, s);
        s = _mm256_fmadd_ps(weights8<TABLE>(_mm_srli_si128(i1, 8), tab_lo[r], tab_hi[r], zero[r]), x3, s);
        seg[r] = _mm256_add_ps(seg[r], s);
      }
    }
    if constexpr (TABLE) {
      for (int r = 0; r < R; ++r) acc[r] = _mm256_add_ps(acc[r], seg[r]);
    } else {
      const float* sc = w.scales + lut4_cell(w, rb, g);
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(seg[r], _mm256_broadcast_ss(sc + r), acc[r]);
    }
  });
  float sums[R];
  for (int r = 0; r < R; ++r) sums[r] = hsum(acc[r]);
  const int64_t r0 = rb * R, nr = w.rows - r0 < R ? w.rows - r0 : R;
  store_block(w.rows, out, r0, nr, t, 1, sums, 1, 1);
}

// The 4 rows of row block rb as fp32 weights, dst [4][kp].
template <bool TABLE>
void dequantize_block(const PackedLut4& w, int64_t rb, float* dst) {
  constexpr int R = kLut4RowBlock;
  for_stretches(w, w.kp, [&](int64_t g, int64_t c0, int64_t c1) {
    for (int r = 0; r < R; ++r) {
      const int64_t cell = lut4_cell(w, rb, g) + r;
      const __m256i zero = _mm256_set1_epi32(TABLE ? 0 : w.zeros[cell]);
      const __m256 scale = _mm256_set1_ps(TABLE ? 1.f : w.scales[cell]);
      __m256 tab_lo = _mm256_setzero_ps(), tab_hi = _mm256_setzero_ps();
      if constexpr (TABLE) {
        const float* tab = w.table + ((rb * R + r) * w.groups + g) * 16;
        tab_lo = _mm256_loadu_ps(tab);
        tab_hi = _mm256_loadu_ps(tab + 8);
      }
      float* row = dst + r * w.kp;
      for (int64_t col = c0; col < c1; col += 32) {
        const __m256i idx = indices32(lut4_chunk(w, rb, col / kLut4Chunk) + 32 * r, col);
        const __m128i i0 = _mm256_castsi256_si128(idx), i1 = _mm256_extracti128_si256(idx, 1);
        const __m128i pieces[4] = {i0, _mm_srli_si128(i0, 8), i1, _mm_srli_si128(i1, 8)};
        for (int p = 0; p < 4; ++p) {
          __m256 v = weights8<TABLE>(pieces[p], tab_lo, tab_hi, zero);
          if constexpr (!TABLE) v = _mm256_mul_ps(v, scale);
          _mm256_storeu_ps(row + col + 8 * p, v);
        }
      }
    }
  });
}

// Weight-only from m = 4: the row block is dequantized once, then 2 tokens x 4 rows of fp32 dot
// products per pass (one FMA per 8 multiply-adds instead of a conversion per token).
template <bool TABLE>
void float_rows_dequantized(const PackedLut4& w, const Lut4FloatActs& x, int64_t m, int64_t rb,
                            const LinearOutput& out) {
  constexpr int R = kLut4RowBlock;
  float* wf = scratch_floats(kKernelScratch, R * w.kp);
  dequantize_block<TABLE>(w, rb, wf);
  const int64_t r0 = rb * R, nr = w.rows - r0 < R ? w.rows - r0 : R;
  int64_t t = 0;
  for (; t < m; t += 2) {
    const int T = m - t >= 2 ? 2 : 1;
    __m256 acc[2][R];
    for (int u = 0; u < 2; ++u)
      for (int r = 0; r < R; ++r) acc[u][r] = _mm256_setzero_ps();
    const float* x0 = x.x + t * w.kp;
    const float* x1 = x0 + (T == 2 ? w.kp : 0);
    for (int64_t c = 0; c < w.kp; c += 8) {
      const __m256 a = _mm256_loadu_ps(x0 + c), b = _mm256_loadu_ps(x1 + c);
      for (int r = 0; r < R; ++r) {
        const __m256 wv = _mm256_loadu_ps(wf + r * w.kp + c);
        acc[0][r] = _mm256_fmadd_ps(wv, a, acc[0][r]);
        acc[1][r] = _mm256_fmadd_ps(wv, b, acc[1][r]);
      }
    }
    for (int u = 0; u < T; ++u) {
      float sums[R];
      for (int r = 0; r < R; ++r) sums[r] = hsum(acc[u][r]);
      store_block(w.rows, out, r0, nr, t + u, 1, sums, 1, 1);
    }
  }
}

void weight_only_avx2(const PackedLut4& w, const Lut4FloatActs& x, int64_t m, int64_t rb0, int64_t rb1,
                      const LinearOutput& out) {
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    if (m >= kLut4DequantizeMinTokens) {
      if (w.table) float_rows_dequantized<true>(w, x, m, rb, out);
      else float_rows_dequantized<false>(w, x, m, rb, out);
      continue;
    }
    for (int64_t t = 0; t < m; ++t) {
      if (w.table) float_block<true>(w, x, t, rb, out);
      else float_block<false>(w, x, t, rb, out);
    }
  }
}

}  // namespace

const Lut4Kernels lut4_kernels_avx2 = {
    .isa = "avx2",
    .dynamic = dynamic_avx2,
    .weight_only = weight_only_avx2,
};

}  // namespace sparseinfer
