// AVX-512 VNNI tier: vpdpbusd (u8 x s8 -> int32, 64 multiply-adds per instruction) for W8A8 at
// any m, and the dequantize-in-registers kernel for weight-only.
#include "avx512_kernels.h"

namespace sparseinfer {

const Int8Kernels int8_kernels_avx512_vnni = {
    .isa = "avx512_vnni",
    .u8_acts = true,
    .quantize_row = quantize_row_avx512<true>,
    .dynamic_rows = dynamic_rows_vnni,
    .rows_path = "vnni_rows",
    .dynamic_tiles = nullptr,
    .tiles_path = nullptr,
    .tiles_min_m = 0,
    .weight_only = weight_only_avx512,
    .weight_only_tiles_min_m = 0,
};

}  // namespace sparseinfer
