// AVX2 tier. W8A8 multiplies with vpmaddubsw on |w| and sign-moved x, which cannot saturate
// (see dynamic_block), over a register tile of tokens x 16 rows. Weight-only dequantizes 8
// weights per vector in registers for each token, or from a few tokens on, chunks of a row block
// once into L1 for an fp32 register tile (weight_only_dequantized).
#include <immintrin.h>

#include <algorithm>

#include "../simd/avx2.h"
#include "common.h"
#include "sparseinfer/scratch.h"

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

// W8A8, T tokens x 16 rows. A 64-byte line holds rows 0-7 then rows 8-15, 4 columns each; one
// vector of it meets the token's 4 columns broadcast. vpmaddubsw takes |w| (u8, <= 128) against
// x with w's sign (|x| <= 127: no wrap), so a pair sums to at most 2 * 128 * 127 < 2^15 and never
// saturates; vpmaddwd by ones then gives each row's 4-column dot in an int32 lane: exact. |w| is
// taken once per line and shared by the T tokens of the register tile.
template <int T>
void dynamic_block(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t rb, const LinearOutput& out) {
  __m256 sum[T][2];
  _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) sum[t][0] = sum[t][1] = _mm256_setzero_ps();
  const int8_t* line = w.qweight + int8_line(w, rb, 0);
  const int8_t* xq[T];
  _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) xq[t] = x.q + (t0 + t) * x.stride;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256i acc[T][2];
    _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
    for (int64_t kq = group_begin(w, g) / 4; kq < group_end(w, g) / 4; ++kq) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + kq * 64));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + kq * 64 + 32));
      const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
      _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) {
        int32_t q4;
        __builtin_memcpy(&q4, xq[t] + kq * 4, 4);
        const __m256i xv = _mm256_set1_epi32(q4);
        const __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(xv, w0));
        const __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(xv, w1));
        acc[t][0] = _mm256_add_epi32(acc[t][0], _mm256_madd_epi16(p0, ones));
        acc[t][1] = _mm256_add_epi32(acc[t][1], _mm256_madd_epi16(p1, ones));
      }
    }
    // sum = sum + float(dot) * scale, row by row as the reference (no contraction: -ffp-contract=off).
    const float* scale = w.scales + int8_group_cell(w, rb, g);
    const __m256 s0 = _mm256_loadu_ps(scale), s1 = _mm256_loadu_ps(scale + 8);
    _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) {
      sum[t][0] = _mm256_add_ps(sum[t][0], _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t][0]), s0));
      sum[t][1] = _mm256_add_ps(sum[t][1], _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t][1]), s1));
    }
  }
  _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) {
    alignas(32) float v[16];
    const __m256 xs = _mm256_set1_ps(x.scale[t0 + t]);
    _mm256_store_ps(v, _mm256_mul_ps(sum[t][0], xs));
    _mm256_store_ps(v + 8, _mm256_mul_ps(sum[t][1], xs));
    store_rows16(w, rb, t0 + t, v, out);
  }
}

// Token blocks of 4 (16 int32 accumulators would not leave registers for the weights).
void dynamic_rows_avx2(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t mt,
                       int64_t rb0, int64_t rb1, const LinearOutput& out) {
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    int64_t t = t0;
    for (; t + 4 <= t0 + mt; t += 4) dynamic_block<4>(w, x, t, rb, out);
    switch (t0 + mt - t) {
      case 3: dynamic_block<3>(w, x, t, rb, out); break;
      case 2: dynamic_block<2>(w, x, t, rb, out); break;
      case 1: dynamic_block<1>(w, x, t, rb, out); break;
      default: break;
    }
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

// Weight-only from kWoTilesMinTokens tokens: each chunk of a row block is dequantized
// once into L1, column-major (16 rows of one column side by side, grouped scales applied), then
// a register tile of T tokens x 16 rows runs one broadcast and two FMAs per column and token:
// the conversion is paid once per weight instead of once per weight and token.
constexpr int64_t kWoTilesMinTokens = 4;  // measured: below, converting per token is faster
constexpr int64_t kWoChunkQuads = 64;  // columns / 4 per chunk: 256 columns x 16 rows fp32 = 16 KB

// Column-major fp32 of lines [kq0, kq1) of row block rb: dst[(4 (kq - kq0) + c) * 16 + r]
// (GROUPED: times each row's group scale). Fields are read into locals once: the stores
// through dst could alias w for the compiler.
template <bool GROUPED>
void dequantize_chunk(const PackedInt8& w, int64_t rb, int64_t kq0, int64_t kq1, float* dst) {
  const int8_t* line = w.qweight + int8_line(w, rb, 0);
  // Per 128-bit lane (4 rows x 4 columns, row-major) -> column-major; then dwords 0,4,1,5,...
  // put rows 0-3 and 4-7 of a column next to each other.
  const __m256i by_col = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                          0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i halves = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const int64_t group_quads = GROUPED ? w.group_size / 4 : 0;
  const float* scales = w.scales + int8_group_cell(w, rb, 0);
  // The last group runs to kp (padding to 64 columns may pass groups * group_size).
  const int64_t last = w.groups - 1;
  int64_t group = GROUPED ? std::min(kq0 / group_quads, last) : 0;
  int64_t next_group = GROUPED && group < last ? (group + 1) * group_quads : kq1;
  __m256 s[2] = {_mm256_loadu_ps(scales + 16 * group), _mm256_loadu_ps(scales + 16 * group + 8)};
  for (int64_t kq = kq0; kq < kq1; ++kq) {
    if (GROUPED && kq == next_group) {
      ++group;
      next_group = group < last ? next_group + group_quads : kq1;
      s[0] = _mm256_loadu_ps(scales + 16 * group);
      s[1] = _mm256_loadu_ps(scales + 16 * group + 8);
    }
    float* d = dst + (kq - kq0) * 64;
    for (int h = 0; h < 2; ++h) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + kq * 64 + 32 * h));
      v = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, by_col), halves);
      const __m128i c01 = _mm256_castsi256_si128(v), c23 = _mm256_extracti128_si256(v, 1);
      const __m128i cols[4] = {c01, _mm_srli_si128(c01, 8), c23, _mm_srli_si128(c23, 8)};
      for (int c = 0; c < 4; ++c) {
        __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(cols[c]));
        if constexpr (GROUPED) f = _mm256_mul_ps(f, s[h]);
        _mm256_store_ps(d + c * 16 + 8 * h, f);
      }
    }
  }
}

// acc[t][16] += sum over the chunk's cols columns (a multiple of 4) of wk[col][r] * x[t][col].
// S sets of partial sums over alternate columns keep at least 8 FMA chains in flight (FMA
// latency 4 x 2 per cycle) when T is small.
template <int T>
void weight_only_tile(const float* wk, int64_t cols, const float* x, int64_t xs, float* acc) {
  constexpr int S = T == 1 ? 4 : T <= 3 ? 2 : 1;
  // Small arrays of chunk sums from zero, added to acc at the end, and unrolled early: GCC keeps
  // larger or acc-loaded arrays of vectors in memory and stores them every column.
  __m256 lo[S][T], hi[S][T];
  _Pragma("GCC unroll 8") for (int s = 0; s < S; ++s)
    _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) lo[s][t] = hi[s][t] = _mm256_setzero_ps();
  for (int64_t k = 0; k < cols; k += S) {
    _Pragma("GCC unroll 8") for (int s = 0; s < S; ++s) {
      const __m256 w0 = _mm256_load_ps(wk + 16 * (k + s)), w1 = _mm256_load_ps(wk + 16 * (k + s) + 8);
      _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) {
        const __m256 xb = _mm256_broadcast_ss(x + t * xs + k + s);
        lo[s][t] = _mm256_fmadd_ps(w0, xb, lo[s][t]);
        hi[s][t] = _mm256_fmadd_ps(w1, xb, hi[s][t]);
      }
    }
  }
  _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) {
    __m256 l = lo[0][t], h = hi[0][t];
    _Pragma("GCC unroll 8") for (int s = 1; s < S; ++s) {
      l = _mm256_add_ps(l, lo[s][t]);
      h = _mm256_add_ps(h, hi[s][t]);
    }
    _mm256_store_ps(acc + 16 * t, _mm256_add_ps(_mm256_load_ps(acc + 16 * t), l));
    _mm256_store_ps(acc + 16 * t + 8, _mm256_add_ps(_mm256_load_ps(acc + 16 * t + 8), h));
  }
}

// 6 tokens x 16 rows: 12 accumulators, 2 weight vectors and a broadcast fit the 16 registers.
void weight_only_dequantized(const PackedInt8& w, const float* x, int64_t t0, int64_t mt, int64_t rb,
                             const LinearOutput& out) {
  constexpr int kTile = 6;
  float* wk = scratch_floats(kKernelScratch, kWoChunkQuads * 64 + mt * 16);
  float* acc = wk + kWoChunkQuads * 64;
  for (int64_t i = 0; i < mt * 16; ++i) acc[i] = 0.f;
  const int64_t quads = w.kp / 4;
  for (int64_t kq0 = 0; kq0 < quads; kq0 += kWoChunkQuads) {
    const int64_t kq1 = kq0 + kWoChunkQuads < quads ? kq0 + kWoChunkQuads : quads;
    if (w.groups > 1) dequantize_chunk<true>(w, rb, kq0, kq1, wk);
    else dequantize_chunk<false>(w, rb, kq0, kq1, wk);
    const int64_t cols = (kq1 - kq0) * 4;
    const float* xc = x + t0 * w.kp + kq0 * 4;
    int64_t t = 0;
    for (; t + kTile <= mt; t += kTile) weight_only_tile<kTile>(wk, cols, xc + t * w.kp, w.kp, acc + 16 * t);
    switch (mt - t) {
      case 5: weight_only_tile<5>(wk, cols, xc + t * w.kp, w.kp, acc + 16 * t); break;
      case 4: weight_only_tile<4>(wk, cols, xc + t * w.kp, w.kp, acc + 16 * t); break;
      case 3: weight_only_tile<3>(wk, cols, xc + t * w.kp, w.kp, acc + 16 * t); break;
      case 2: weight_only_tile<2>(wk, cols, xc + t * w.kp, w.kp, acc + 16 * t); break;
      case 1: weight_only_tile<1>(wk, cols, xc + t * w.kp, w.kp, acc + 16 * t); break;
      default: break;
    }
  }
  const float* scale = w.scales + int8_group_cell(w, rb, 0);
  for (int64_t t = 0; t < mt; ++t) {
    float* v = acc + 16 * t;
    if (w.groups == 1)
      for (int r = 0; r < 16; ++r) v[r] = v[r] * scale[r];
    store_rows16(w, rb, t0 + t, v, out);
  }
}

void weight_only_avx2(const PackedInt8& w, const float* x, int64_t t0, int64_t mt, int64_t rb0,
                      int64_t rb1, const LinearOutput& out) {
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    if (mt >= kWoTilesMinTokens) {
      weight_only_dequantized(w, x, t0, mt, rb, out);
      continue;
    }
    for (int64_t t = t0; t < t0 + mt; ++t) {
      if (w.groups == 1) weight_only_block<false>(w, x, t, rb, out);
      else weight_only_block<true>(w, x, t, rb, out);
    }
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
    .weight_only_tiles_min_m = kWoTilesMinTokens,
};

}  // namespace sparseinfer
