// AVX-512 int8 kernels shared by the avx512_vnni and amx tiers (included by avx512_vnni.cpp and
// amx.cpp, each compiled with its own flags): per-token quantization, the vpdpbusd row kernel
// for W8A8 and the dequantize-in-registers row kernel for weight-only.
// No STL here (see kernel_common.h).
#pragma once
#include <immintrin.h>

#include "../simd/avx512.h"
#include "common.h"

namespace sparseinfer {
namespace {

template <DType DT>
__m512 load16_f32(const void* x, int64_t c, __mmask16 k) {
  if constexpr (DT == DType::f32)
    return _mm512_maskz_loadu_ps(k, static_cast<const float*>(x) + c);
  else
    return Avx512Base::widen<DT>(_mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(x) + c));
}

// Same bits as quantize_row_ref: max is exact in any order (an integer max over |x|'s bits,
// common.h: masked-off lanes load as +0), x * inv is one fp32 product and vcvtps2dq rounds to
// nearest even like nearbyint. A row with a NaN or an inf leaves before the second pass.
template <DType DT, bool U8>
void quantize_row_dt(const void* x, int64_t cols, int64_t stride, int8_t* q, float* scale) {
  const __m512i sign = _mm512_set1_epi32(0x7fffffff);
  __m512i vmax = _mm512_setzero_si512();
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 k = cols - c >= 16 ? __mmask16(0xffff) : Avx512Base::tail(int(cols - c));
    vmax = _mm512_max_epi32(_mm512_and_si512(_mm512_castps_si512(load16_f32<DT>(x, c, k)), sign), vmax);
  }
  const float absmax = float_from_bits(static_cast<uint32_t>(_mm512_reduce_max_epi32(vmax)));
  if (!int8_finite(absmax))
    return quantize_nonfinite_row(absmax, stride, static_cast<int8_t>(U8 ? 0x80 : 0), q, scale);
  const __m512 inv = _mm512_set1_ps(int8_inverse_scale(absmax));
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  const __m128i offset = _mm_set1_epi8(U8 ? char(0x80) : 0);
  for (int64_t c = 0; c < stride; c += 16) {
    const __mmask16 k = c >= cols ? __mmask16(0) : (cols - c >= 16 ? __mmask16(0xffff) : Avx512Base::tail(int(cols - c)));
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load16_f32<DT>(x, c, k), inv));
    v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
    __m128i b = _mm_xor_si128(_mm512_cvtepi32_epi8(v), offset);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), b);
  }
  *scale = absmax / 127.f;
}

template <bool U8>
void quantize_row_avx512(DType dtype, const void* x, int64_t cols, int64_t stride, int8_t* q, float* scale) {
  switch (dtype) {
    case DType::f32: return quantize_row_dt<DType::f32, U8>(x, cols, stride, q, scale);
    case DType::bf16: return quantize_row_dt<DType::bf16, U8>(x, cols, stride, q, scale);
    case DType::f16: return quantize_row_dt<DType::f16, U8>(x, cols, stride, q, scale);
  }
}

// y for tokens [t, t + T) of row block rb from per-token fp32 sums over groups (16 rows each).
inline void store_rows16(const PackedInt8& w, int64_t rb, int64_t t, const __m512 v, const LinearOutput& out) {
  alignas(64) float buf[16];
  _mm512_store_ps(buf, v);
  const int64_t r0 = rb * kInt8RowBlock;
  const int64_t nr = w.rows - r0 < kInt8RowBlock ? w.rows - r0 : kInt8RowBlock;
  store_block(w.rows, out, r0, nr, t, 1, buf, 1, 1);
}

// One group's step of the W8A8 epilogue (int8_linear.h) for the 16 rows of block rb: the u8 x s8
// dot minus 128 * wsum is the exact signed dot; sum + float(dot) * scale, rounded twice (no FMA).
struct GroupEpilogue {
  __m512i comp;
  __m512 scale;
  GroupEpilogue(const PackedInt8& w, int64_t rb, int64_t g)
      : comp(_mm512_slli_epi32(_mm512_loadu_si512(w.wsum + int8_group_cell(w, rb, g)), 7)),
        scale(_mm512_loadu_ps(w.scales + int8_group_cell(w, rb, g))) {}
  __m512 add(__m512i u8_dot, __m512 sum) const {
    return _mm512_add_ps(sum, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(u8_dot, comp)), scale));
  }
};

// W8A8, T tokens x 16 rows, u8 activations x s8 weights with vpdpbusd. U independent
// accumulator chains per token hide the instruction's latency when T is small.
template <int T, int U>
void dynamic_block_vnni(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t rb,
                        const LinearOutput& out) {
  __m512 sum[T];
  for (int t = 0; t < T; ++t) sum[t] = _mm512_setzero_ps();
  const int8_t* line = w.qweight + int8_line(w, rb, 0);
  for (int64_t g = 0; g < w.groups; ++g) {
    const int64_t q0 = group_begin(w, g) / 4, q1 = group_end(w, g) / 4;
    __m512i acc[T][U];
    for (int t = 0; t < T; ++t)
      for (int u = 0; u < U; ++u) acc[t][u] = _mm512_setzero_si512();
    for (int64_t kq = q0; kq < q1; kq += U) {
      for (int u = 0; u < U; ++u) {
        const __m512i wv = _mm512_loadu_si512(line + (kq + u) * 64);
        for (int t = 0; t < T; ++t) {
          int32_t xq;
          __builtin_memcpy(&xq, x.q + (t0 + t) * x.stride + (kq + u) * 4, 4);
          acc[t][u] = _mm512_dpbusd_epi32(acc[t][u], _mm512_set1_epi32(xq), wv);
        }
      }
    }
    const GroupEpilogue epilogue(w, rb, g);
    for (int t = 0; t < T; ++t) {
      __m512i dot = acc[t][0];
      for (int u = 1; u < U; ++u) dot = _mm512_add_epi32(dot, acc[t][u]);
      sum[t] = epilogue.add(dot, sum[t]);
    }
  }
  for (int t = 0; t < T; ++t)
    store_rows16(w, rb, t0 + t, _mm512_mul_ps(sum[t], _mm512_set1_ps(x.scale[t0 + t])), out);
}

void dynamic_rows_vnni(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t mt,
                       int64_t rb0, int64_t rb1, const LinearOutput& out) {
  // Group sizes are multiples of 32 (8 K-quads): U divides every group.
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    int64_t t = t0;
    for (; t + 4 <= t0 + mt; t += 4) dynamic_block_vnni<4, 2>(w, x, t, rb, out);
    switch (t0 + mt - t) {
      case 3: dynamic_block_vnni<3, 2>(w, x, t, rb, out); break;
      case 2: dynamic_block_vnni<2, 4>(w, x, t, rb, out); break;
      case 1: dynamic_block_vnni<1, 8>(w, x, t, rb, out); break;
      default: break;
    }
  }
}

// Weight-only, T tokens x 16 rows: each 64-byte line becomes 4 fp32 vectors (4 rows x 4 columns
// each) multiplied by the token's 4 columns broadcast to every 128-bit lane. Per-channel scales
// apply once at the end; per-group scales scale the dequantized weights (GROUPED).
template <int T, int U, bool GROUPED>
void weight_only_block(const PackedInt8& w, const float* x, int64_t t0, int64_t rb, const LinearOutput& out) {
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc[U][T][4];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < T; ++t)
      for (int p = 0; p < 4; ++p) acc[u][t][p] = _mm512_setzero_ps();
  const int8_t* line = w.qweight + int8_line(w, rb, 0);
  for (int64_t g = 0; g < w.groups; ++g) {
    const int64_t q0 = group_begin(w, g) / 4, q1 = group_end(w, g) / 4;
    __m512 srep[4];
    if constexpr (GROUPED) {
      const __m512 s = _mm512_loadu_ps(w.scales + int8_group_cell(w, rb, g));
      for (int p = 0; p < 4; ++p)
        srep[p] = _mm512_permutexvar_ps(_mm512_add_epi32(spread, _mm512_set1_epi32(4 * p)), s);
    }
    for (int64_t kq = q0; kq < q1; kq += U) {
      for (int u = 0; u < U; ++u) {
        const int8_t* l = line + (kq + u) * 64;
        __m512 wf[4];
        for (int p = 0; p < 4; ++p) {
          wf[p] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(l + 16 * p))));
          if constexpr (GROUPED) wf[p] = _mm512_mul_ps(wf[p], srep[p]);
        }
        for (int t = 0; t < T; ++t) {
          const __m512 xv = _mm512_broadcast_f32x4(_mm_loadu_ps(x + (t0 + t) * w.kp + (kq + u) * 4));
          for (int p = 0; p < 4; ++p) acc[u][t][p] = _mm512_fmadd_ps(wf[p], xv, acc[u][t][p]);
        }
      }
    }
  }
  // Lane 4i + j of piece p holds row 4p + i, column j mod 4: sum the 4 lanes of every row.
  alignas(64) float lanes[64];
  for (int t = 0; t < T; ++t) {
    for (int p = 0; p < 4; ++p) {
      __m512 a = acc[0][t][p];
      for (int u = 1; u < U; ++u) a = _mm512_add_ps(a, acc[u][t][p]);
      _mm512_store_ps(lanes + 16 * p, a);
    }
    alignas(64) float rows16[16];
    for (int r = 0; r < 16; ++r) {
      const float* l = lanes + 4 * r;
      rows16[r] = (l[0] + l[1]) + (l[2] + l[3]);
    }
    __m512 v = _mm512_load_ps(rows16);
    if constexpr (!GROUPED) v = _mm512_mul_ps(v, _mm512_loadu_ps(w.scales + int8_group_cell(w, rb, 0)));
    store_rows16(w, rb, t0 + t, v, out);
  }
}

template <bool GROUPED>
void weight_only_rows(const PackedInt8& w, const float* x, int64_t t0, int64_t mt, int64_t rb0,
                      int64_t rb1, const LinearOutput& out) {
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    int64_t t = t0;
    for (; t + 4 <= t0 + mt; t += 4) weight_only_block<4, 1, GROUPED>(w, x, t, rb, out);
    switch (t0 + mt - t) {
      case 3: weight_only_block<3, 1, GROUPED>(w, x, t, rb, out); break;
      case 2: weight_only_block<2, 1, GROUPED>(w, x, t, rb, out); break;
      case 1: weight_only_block<1, 2, GROUPED>(w, x, t, rb, out); break;
      default: break;
    }
  }
}

void weight_only_avx512(const PackedInt8& w, const float* x, int64_t t0, int64_t mt, int64_t rb0,
                        int64_t rb1, const LinearOutput& out) {
  if (w.groups == 1) weight_only_rows<false>(w, x, t0, mt, rb0, rb1, out);
  else weight_only_rows<true>(w, x, t0, mt, rb0, rb1, out);
}

}  // namespace
}  // namespace sparseinfer
