// AVX2 2:4 kernels: a 32-column x chunk is 4 ymm; each 8 kept values (16 columns) pick their x
// lanes with two vpermps and a blend on index bit 3.
#include "../simd/avx2.h"
#include "common.h"

namespace sparseinfer {
namespace {

struct Simd : Avx2Base {
  struct Chunk {
    V q[4];
  };
  using Index = __m256i;
  static Chunk load_chunk(const float* x32) {
    return {{_mm256_loadu_ps(x32), _mm256_loadu_ps(x32 + 8), _mm256_loadu_ps(x32 + 16),
             _mm256_loadu_ps(x32 + 24)}};
  }
  // Lane j of part q: 4 * (j / 2) + ((meta >> (16q + 2j)) & 3), an index into columns [16q, 16q + 16).
  static Index index(uint32_t meta, int part) {
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i groups = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
    __m256i shifted = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(meta >> (16 * part))), shifts);
    return _mm256_or_si256(_mm256_and_si256(shifted, _mm256_set1_epi32(3)), groups);
  }
  static V pick(const Chunk& x, Index idx, int part) {
    V lo = _mm256_permutevar8x32_ps(x.q[2 * part], idx);
    V hi = _mm256_permutevar8x32_ps(x.q[2 * part + 1], idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
};

#include "simd_kernels.h"

}  // namespace

const Sparse24Kernels sparse24_kernels_avx2 = {"avx2", 8, 8, rows, tokens};

}  // namespace sparseinfer
