// Sparse int8 Linear: pruned weights whose kept values are symmetric int8 (per-output-channel or
// per-group fp32 scales), the one kernel family behind the "csr+int8" (unstructured) and
// "2:4+int8" formats.
//
// Packed layout ("window lanes", built once by python/sparseinfer/formats/sparse_int8_layout.py,
// validated there). Rows go in pairs (A = 2p, B = 2p + 1; an odd last row pairs with a zero row);
// columns in windows of 16 and window pairs of 32 (columns padded with zeros to kp, a multiple
// of 32). The non-zeros of a pair in one window fill *lanes* of 16 slots: row A's in slots 0..7,
// row B's in slots 8..15, in column order (a row with more than 8 in the window goes on in the
// next lane); a slot holds an int8 value and the 4-bit column of its value inside the window (a
// padding slot holds value 0, column 0). A window pair's lanes form *steps* of 32 slots: lane i
// of the even window in slots 0..15 and lane i of the odd window in slots 16..31 (an empty lane
// when one window has fewer), so one 256-bit load of the activations (the window pair) serves a
// step, `vpshufb` gathers every slot's activation inside its 128-bit half, and every group of 4
// slots belongs to one row (int32 lanes 0, 1, 4, 5 of a `vpmaddwd` are row A's).
//   values     [steps][32] int8
//   idx        [steps][16] uint8: slot s of the even window in the low nibble, of the odd window
//              in the high nibble
//   counts     [row_pairs][kp / 32] uint8: steps of each (pair, window pair), 0..2
//   step_wp    [steps] uint16: the window pair of each step (counts spelled out, so the kernels
//              walk a pair's steps in one flat loop)
//   pair_steps [row_pairs + 1] int64: the first step of each pair (the last entry is the total)
//   scales     [row_pairs * 2][groups] fp32: weight scale per row and group (group_size a multiple
//              of 32, so every window pair lies in one group; groups == 1: per channel)
// 2:4 weights (at most 8 per row and window) are packed *uniform*: exactly one step per window
// pair (counts all 1), which kernels may rely on when `uniform` is set (the packer and the op's
// proof guarantee it).
//
// act = dynamic (W8A8): tokens are quantized as int8_linear does (symmetric per token, +-127);
//   the integer dot products over the stored values are exact (int32) and
//     y[t][r] = (sum over groups g, in order, of float(dot_g) * scale[r][g]) * scale_x[t] + bias[r]
//   rounded in fp32 in that order (no fused multiply-add): bit-identical on every ISA tier and to
//   python/sparseinfer/reference.py. A token holding a NaN or an inf takes the float path.
// act = none (weight-only): y = x @ dequant(W).T + bias in fp32 over the stored values (any
//   order: within the usual tolerance of the reference).
#pragma once
#include <cstdint>

#include "sparseinfer/dtype.h"
#include "sparseinfer/linear_output.h"

namespace sparseinfer {

constexpr int64_t kSpI8Window = 16;
constexpr int64_t kSpI8WindowPair = 32;
constexpr int64_t kSpI8StepSlots = 32;
// |dot| <= 128 * 127 * K must fit an int32: K <= 132104.
constexpr int64_t kSpI8MaxCols = 131072;

struct PackedSparseInt8 {
  int64_t rows = 0, cols = 0;
  int64_t row_pairs = 0, kp = 0;
  int64_t groups = 1;
  int64_t group_size = 0;  // columns per group; 0 when groups == 1
  int64_t steps = 0;
  bool uniform = false;
  const int8_t* values = nullptr;
  const uint8_t* idx = nullptr;
  const uint8_t* counts = nullptr;
  const uint16_t* step_wp = nullptr;
  const int64_t* pair_steps = nullptr;
  const float* scales = nullptr;
};

// Window pairs per group as the kernels walk them (per channel: all of them).
inline int64_t spi8_group_pairs(const PackedSparseInt8& w) {
  return w.groups == 1 ? w.kp / kSpI8WindowPair : w.group_size / kSpI8WindowPair;
}

// act = dynamic: q [m][kp] int8 (zero beyond cols), scale [m].
struct SpI8QuantActs {
  const int8_t* q = nullptr;
  const float* scale = nullptr;
};

using SpI8DynamicKernel = void (*)(const PackedSparseInt8& w, const SpI8QuantActs& x, int64_t m,
                                   int64_t p0, int64_t p1, const LinearOutput& out);
// act = none: x fp32 [m][kp] (zero beyond cols).
using SpI8WeightOnlyKernel = void (*)(const PackedSparseInt8& w, const float* x, int64_t m,
                                      int64_t p0, int64_t p1, const LinearOutput& out);

struct SpI8Kernels {
  const char* isa;
  SpI8DynamicKernel dynamic;
  SpI8WeightOnlyKernel weight_only;
};

extern const SpI8Kernels spi8_kernels_reference;
extern const SpI8Kernels spi8_kernels_avx2;

enum class SpI8Act : int { none = 0, dynamic = 1 };

struct SparseInt8LinearCall {
  PackedSparseInt8 w;
  int64_t m = 0;
  const void* x = nullptr;  // [m, cols] contiguous, dtype out.dtype
  SpI8Act act = SpI8Act::dynamic;
  LinearOutput out;
};
void sparse_int8_linear(const SparseInt8LinearCall& call, int num_threads);

// "<isa>_dynamic" / "<isa>_float" for the active tier.
const char* sparse_int8_linear_path(SpI8Act act, int64_t m);

}  // namespace sparseinfer
