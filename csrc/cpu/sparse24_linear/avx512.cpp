// AVX-512 2:4 kernels: a 32-column x chunk lives in two zmm; vpermt2ps picks the x lane under
// each of 16 kept values, its index built from the 2-bit metadata in three instructions.
#include "../simd/avx512.h"
#include "common.h"

namespace sparseinfer {
namespace {

struct Simd : Avx512Base {
  struct Chunk {
    V lo, hi;
  };
  using Index = __m512i;
  static Chunk load_chunk(const float* x32) { return {_mm512_loadu_ps(x32), _mm512_loadu_ps(x32 + 16)}; }
  // Lane j: 4 * (j / 2) + ((meta >> 2j) & 3), a 5-bit index into the 32-column chunk.
  static Index index(uint32_t meta, int /*part*/) {
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i groups = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    __m512i shifted = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(meta)), shifts);
    return _mm512_ternarylogic_epi32(shifted, _mm512_set1_epi32(3), groups, 0xEA);  // (a & b) | c
  }
  static V pick(const Chunk& x, Index idx, int /*part*/) { return _mm512_permutex2var_ps(x.lo, idx, x.hi); }
};

#include "simd_kernels.h"

}  // namespace

const Sparse24Kernels sparse24_kernels_avx512 = {"avx512", 16, 4, rows, tokens};

}  // namespace sparseinfer
