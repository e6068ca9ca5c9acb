// AVX-512 VNNI tier: vpdpbusd (u8 x s8 -> int32, 64 multiply-adds per instruction) for W8A8 at
// any m, and the dequantize-in-registers kernel for weight-only.
#include "avx512_kernels.h"

namespace sparseinfer {

const Int8Kernels int8_kernels_avx512_vnni = {
    "avx512_vnni", true, quantize_row_avx512<true>, dynamic_rows_vnni, nullptr, 0, weight_only_avx512};

}  // namespace sparseinfer
