// AMX-INT8 tier: tdpbusd on 16x64 u8 activation tiles x 16x64 s8 weight tiles (1 KB, straight
// from the packed layout) into 16x16 int32 tiles, 2x2 of them per step: 32 tokens x 32 rows.
// Small m runs the AVX-512 VNNI row kernel (the tile work per weight byte is then wasted).
#include "avx512_kernels.h"
#include "sparseinfer/scratch.h"

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

// K blocks per chunk: the chunk's weight tiles (2 x 8 KB) stay in L1 while every token tile
// passes over them, so only activation tiles come from L2 (4, 8 and 16 measured; 8 best).
constexpr int64_t kChunkBlocks = 8;
#ifndef SI_AMX_TB
#define SI_AMX_TB 256
#endif
constexpr int64_t kBlockTokens = SI_AMX_TB;

// Adds one int32 C tile (16 tokens x 16 rows of group g) into the fp32 sums [16][16], in the
// epilogue order of int8_linear.h.
inline void accumulate_tile(const PackedInt8& w, const int32_t* c, int64_t rb, int64_t g, float* sums) {
  const GroupEpilogue epilogue(w, rb, g);
  for (int i = 0; i < 16; ++i)
    _mm512_storeu_ps(sums + 16 * i, epilogue.add(_mm512_loadu_si512(c + 16 * i), _mm512_loadu_ps(sums + 16 * i)));
}

// K blocks [kb0, kb1) for NT token tiles (from token t) x NR row tiles (from row block rb). The
// int32 C state [4][256] (tile 2i + j: token tile i, row tile j) is zeroed (fresh) or loaded,
// accumulated and stored back.
template <int NT, int NR>
void tiles_chunk(const PackedInt8& w, const QuantizedActs& x, int64_t t, int64_t rb, int64_t kb0,
                 int64_t kb1, bool fresh, int32_t* c) {
  if (fresh) {
    _tile_zero(0);
    if constexpr (NR == 2) _tile_zero(1);
    if constexpr (NT == 2) _tile_zero(2);
    if constexpr (NT == 2 && NR == 2) _tile_zero(3);
  } else {
    _tile_loadd(0, c, 64);
    if constexpr (NR == 2) _tile_loadd(1, c + 256, 64);
    if constexpr (NT == 2) _tile_loadd(2, c + 512, 64);
    if constexpr (NT == 2 && NR == 2) _tile_loadd(3, c + 768, 64);
  }
  const int8_t* a0 = x.q + t * x.stride;
  const int8_t* a1 = a0 + 16 * x.stride;
  const int8_t* b0 = w.qweight + int8_line(w, rb, 0);
  const int8_t* b1 = w.qweight + int8_line(w, rb + 1, 0);
  for (int64_t kb = kb0; kb < kb1; ++kb) {
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
  if constexpr (NR == 2) _tile_stored(1, c + 256, 64);
  if constexpr (NT == 2) _tile_stored(2, c + 512, 64);
  if constexpr (NT == 2 && NR == 2) _tile_stored(3, c + 768, 64);
}

void tiles_chunk_any(int nt, int nr, const PackedInt8& w, const QuantizedActs& x, int64_t t,
                     int64_t rb, int64_t kb0, int64_t kb1, bool fresh, int32_t* c) {
  if (nt == 2 && nr == 2) tiles_chunk<2, 2>(w, x, t, rb, kb0, kb1, fresh, c);
  else if (nt == 2) tiles_chunk<2, 1>(w, x, t, rb, kb0, kb1, fresh, c);
  else if (nr == 2) tiles_chunk<1, 2>(w, x, t, rb, kb0, kb1, fresh, c);
  else tiles_chunk<1, 1>(w, x, t, rb, kb0, kb1, fresh, c);
}

// Tokens [t0, t0 + mt) (at most kBlockTokens; quantized rows padded to whole tiles of 16), row
// blocks [rb0, rb1), two row blocks (32 rows) at a time: for every chunk of K, every pair of
// token tiles runs over the same (L1-resident) weight tiles.
void tiles_token_block(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t mt,
                       int64_t rb0, int64_t rb1, const LinearOutput& out) {
  const int64_t pairs = (mt + 31) / 32;  // token-tile pairs
  const int64_t kblocks = w.kp / kInt8KBlock;
  const int64_t per_group = w.groups == 1 ? kblocks : w.group_size / kInt8KBlock;
  // Per token pair: int32 C state [4][256], then fp32 sums [4][256] (same tile order).
  float* scratch = scratch_floats(kKernelScratch, pairs * 2048 + 16);
  for (int64_t rb = rb0; rb < rb1; rb += 2) {
    const int nr = rb + 1 < rb1 ? 2 : 1;
    for (int64_t i = 0; i < pairs * 2048; ++i) scratch[i] = 0.f;
    for (int64_t g = 0; g < w.groups; ++g) {
      const int64_t gk0 = g * per_group, gk1 = g + 1 == w.groups ? kblocks : gk0 + per_group;
      for (int64_t kb = gk0; kb < gk1; kb += kChunkBlocks) {
        const int64_t kb1 = kb + kChunkBlocks < gk1 ? kb + kChunkBlocks : gk1;
        for (int64_t p = 0; p < pairs; ++p) {
          const int64_t t = t0 + 32 * p;
          const int nt = t0 + mt - t > 16 ? 2 : 1;
          int32_t* c = reinterpret_cast<int32_t*>(scratch + p * 2048);
          tiles_chunk_any(nt, nr, w, x, t, rb, kb, kb1, kb == gk0, c);
        }
      }
      for (int64_t p = 0; p < pairs; ++p) {
        const int32_t* c = reinterpret_cast<const int32_t*>(scratch + p * 2048);
        float* sums = scratch + p * 2048 + 1024;
        for (int tile = 0; tile < 4; ++tile)
          accumulate_tile(w, c + 256 * tile, rb + (tile & 1), g, sums + 256 * tile);
      }
    }
    for (int64_t p = 0; p < pairs; ++p) {
      const float* sums = scratch + p * 2048 + 1024;
      for (int i = 0; i < 2; ++i)
        for (int token = 0; token < 16; ++token) {
          const int64_t tt = t0 + 32 * p + 16 * i + token;
          if (tt >= t0 + mt) break;
          for (int j = 0; j < nr; ++j)
            store_rows16(w, rb + j, tt,
                         _mm512_mul_ps(_mm512_loadu_ps(sums + 256 * (2 * i + j) + 16 * token),
                                       _mm512_set1_ps(x.scale[tt])), out);
        }
    }
  }
}

// Tokens in blocks of kBlockTokens, so a block's activations (kBlockTokens x K bytes) stay in L2
// while the weights stream past them.
void dynamic_tiles_amx(const PackedInt8& w, const QuantizedActs& x, int64_t t0, int64_t mt,
                       int64_t rb0, int64_t rb1, const LinearOutput& out) {
  configure_tiles();
  for (int64_t t = t0; t < t0 + mt; t += kBlockTokens)
    tiles_token_block(w, x, t, t0 + mt - t < kBlockTokens ? t0 + mt - t : kBlockTokens, rb0, rb1, out);
  _tile_release();
}

}  // namespace

// Tiles from 8 tokens: below, the VNNI row kernel reads the weight at the same speed with less
// work per byte (measured with bench/, see int8_linear_path).
const Int8Kernels int8_kernels_amx = {
    .isa = "amx",
    .u8_acts = true,
    .quantize_row = quantize_row_avx512<true>,
    .dynamic_rows = dynamic_rows_vnni,
    .rows_path = "vnni_rows",
    .dynamic_tiles = dynamic_tiles_amx,
    .tiles_path = "amx_tiles",
    .tiles_min_m = 8,
    .weight_only = weight_only_avx512,
    .weight_only_tiles_min_m = 0,
};

}  // namespace sparseinfer
