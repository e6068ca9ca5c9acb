// AMX-INT8 tier: tdpbusd on 16x64 u8 activation tiles x 16x64 s8 weight tiles (1 KB, straight
// from the packed layout) into 16x16 int32 tiles, 2x2 of them per step: 32 tokens x 32 rows.
// Small m runs the AVX-512 VNNI row kernel (the tile work per weight byte is then wasted).
#include "avx512_kernels.h"

namespace sparseinfer {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "AMX tile configuration is 64 bytes");

// Tiles 0-3: C (int32 16x16), 4-5: A (activations, 16 tokens x 64 columns), 6-7: B (weights,
// 16 K-quads x 16 rows x 4).
void configure_tiles() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

// Adds one flushed C tile (16 tokens x 16 rows of group g) into the fp32 sums [16][16] and
// returns; sums follow the epilogue order of int8_linear.h.
inline void accumulate_tile(const PackedInt8& w, const int32_t* c, int64_t rb, int64_t g, float* sums) {
  const int64_t cell = int8_group_cell(w, rb, g);
  const __m512i comp = _mm512_slli_epi32(_mm512_loadu_si512(w.wsum + cell), 7);
  const __m512 scale = _mm512_loadu_ps(w.scales + cell);
  for (int i = 0; i < 16; ++i) {
    const __m512i dot = _mm512_sub_epi32(_mm512_loadu_si512(c + 16 * i), comp);
    const __m512 s = _mm512_add_ps(_mm512_loadu_ps(sums + 16 * i), _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale));
    _mm512_storeu_ps(sums + 16 * i, s);
  }
}

// NT token tiles x NR row tiles starting at token t (padded to 16) and row block rb.
template <int NT, int NR>
void tiles_block(const PackedInt8& w, const QuantizedActs& x, int64_t t, int64_t t_end, int64_t rb,
                 const LinearOutput& out) {
  alignas(64) int32_t c[16 * 16];
  alignas(64) float sums[NT][NR][16 * 16] = {};
  const int64_t kblocks = w.kp / kInt8KBlock;
  const int64_t per_group = w.groups == 1 ? kblocks : w.group_size / kInt8KBlock;
  const int8_t* a0 = x.q + t * x.stride;
  const int8_t* a1 = a0 + 16 * x.stride;
  const int8_t* b0 = w.qweight + int8_line(w, rb, 0);
  const int8_t* b1 = w.qweight + int8_line(w, rb + 1, 0);
  for (int64_t g = 0; g < w.groups; ++g) {
    _tile_zero(0);
    if constexpr (NR == 2) _tile_zero(1);
    if constexpr (NT == 2) _tile_zero(2);
    if constexpr (NT == 2 && NR == 2) _tile_zero(3);
    const int64_t kb1 = g + 1 == w.groups ? kblocks : (g + 1) * per_group;
    for (int64_t kb = g * per_group; kb < kb1; ++kb) {
      _tile_loadd(4, a0 + kb * kInt8KBlock, x.stride);
      _tile_loadd(6, b0 + kb * 1024, 64);
      _tile_dpbusd(0, 4, 6);
      if constexpr (NR == 2) {
        _tile_loadd(7, b1 + kb * 1024, 64);
        _tile_dpbusd(1, 4, 7);
      }
      if constexpr (NT == 2) {
        _tile_loadd(5, a1 + kb * kInt8KBlock, x.stride);
        _tile_dpbusd(2, 5, 6);
        if constexpr (NR == 2) _tile_dpbusd(3, 5, 7);
      }
    }
    _tile_stored(0, c, 64);
    accumulate_tile(w, c, rb, g, sums[0][0]);
    if constexpr (NR == 2) {
      _tile_stored(1, c, 64);
      accumulate_tile(w, c, rb + 1, g, sums[0][NR - 1]);
    }
    if constexpr (NT == 2) {
      _tile_stored(2, c, 64);
      accumulate_tile(w, c, rb, g, sums[NT - 1][0]);
      if constexpr (NR == 2) {
        _tile_stored(3, c, 64);
        accumulate_tile(w, c, rb + 1, g, sums[NT - 1][NR - 1]);
      }
    }
  }
  for (int i = 0; i < NT; ++i)
    for (int token = 0; token < 16 && t + 16 * i + token < t_end; ++token) {
      const int64_t tt = t + 16 * i + token;
      for (int j = 0; j < NR; ++j)
        store_rows16(w, rb + j, tt,
                     _mm512_mul_ps(_mm512_loadu_ps(sums[i][j] + 16 * token), _mm512_set1_ps(x.scale[tt])), out);
    }
}

// Tokens [t0, t0 + mt) (the quantized rows are padded to whole tiles of 16), row blocks [rb0, rb1).
void dynamic_tiles_amx(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t mt,
                       int64_t rb0, int64_t rb1, const LinearOutput& out) {
  configure_tiles();
  const int64_t t_end = t0 + mt;
  for (int64_t rb = rb0; rb < rb1; rb += 2) {
    const bool two_rows = rb + 1 < rb1;
    for (int64_t t = t0; t < t_end; t += 32) {
      const bool two_tokens = t_end - t > 16;
      if (two_rows && two_tokens) tiles_block<2, 2>(w, x, t, t_end, rb, out);
      else if (two_rows) tiles_block<1, 2>(w, x, t, t_end, rb, out);
      else if (two_tokens) tiles_block<2, 1>(w, x, t, t_end, rb, out);
      else tiles_block<1, 1>(w, x, t, t_end, rb, out);
    }
  }
  _tile_release();
}

}  // namespace

// Tiles from 8 tokens: below, the VNNI row kernel reads the weight at the same speed with less
// work per byte (measured with bench/, see int8_linear_path).
const Int8Kernels int8_kernels_amx = {
    "amx", true, quantize_row_avx512<true>, dynamic_rows_vnni, dynamic_tiles_amx, 8, weight_only_avx512};

}  // namespace sparseinfer
