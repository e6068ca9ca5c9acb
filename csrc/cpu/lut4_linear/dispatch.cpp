// Threaded driver for lut4_linear: chooses the ISA tier, lays x out once per call (quantized
// per token with int8_linear's code for act = dynamic, fp32 for act = none, plus per-group sums)
// and splits row blocks evenly across threads.
#include <algorithm>
#include <cstring>

#include "../driver_common.h"
#include "common.h"
#include "sparseinfer/cpu_features.h"
#include "sparseinfer/int8_linear.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {
namespace {

constexpr int64_t kMinWorkPerThread = 1 << 18;  // multiply-adds below which a call stays on one thread

// No avx512 entries yet: those tiers run the avx2 kernels (fallbacks: isa_table.h).
constexpr auto kKernels = cpu::kernel_table<Lut4Kernels>({
    {cpu::Isa::reference, &lut4_kernels_reference},
#if SPARSEINFER_X86
    {cpu::Isa::avx2, &lut4_kernels_avx2},
#endif
});
static_assert(cpu::has_reference(kKernels));

const Lut4Kernels& active_kernels() { return cpu::pick_kernels(kKernels, cpu::active_isa()); }

template <class F>
void run_row_blocks(const PackedLut4& w, int64_t m, int num_threads, F&& body) {
  run_unit_chunks(w.row_blocks, w.rows * w.kp * m, kMinWorkPerThread, num_threads, body);
}

// Per-group sums of m quantized rows of kp values (zero past cols: whole groups sum), exact.
void group_sums(const PackedLut4& w, const int8_t* rows, int64_t m, float* xsum) {
  const int64_t width = lut4_group_width(w);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t g = 0; g < w.groups; ++g) {
      const int8_t* v = rows + t * w.kp + g * width;
      const int64_t n = std::min(width, w.kp - g * width);
      int32_t s = 0;
      for (int64_t k = 0; k < n; ++k) s += v[k];
      xsum[t * w.groups + g] = static_cast<float>(s);
    }
}

}  // namespace

const char* lut4_linear_path(Lut4Act act, int64_t /*m*/) {
  const bool avx2 = &active_kernels() != &lut4_kernels_reference;
  if (act == Lut4Act::dynamic) return avx2 ? "avx2_dynamic" : "reference_dynamic";
  return avx2 ? "avx2_float" : "reference_float";
}

void lut4_linear(const Lut4LinearCall& call, int num_threads) {
  const PackedLut4& w = call.w;
  const int64_t m = call.m;
  if (m == 0 || w.rows == 0) return;
  const Lut4Kernels& k = active_kernels();

  if (call.act == Lut4Act::none) {
    float* buffer = scratch_floats(kDriverScratch, m * w.kp);
    rows_to_f32(call.out.dtype, call.x, m, w.cols, w.kp, buffer);
    Lut4FloatActs acts{buffer};
    run_row_blocks(w, m, num_threads, [&](int64_t rb0, int64_t rb1) { k.weight_only(w, acts, m, rb0, rb1, call.out); });
    return;
  }

  // act = dynamic: q int8 [m][kp], scale [m], xsum [m][groups]
  float* buffer = scratch_floats(kDriverScratch, m + m * w.groups + m * w.kp / 4 + 1);
  float* scale = buffer;
  float* xsum = buffer + m;
  int8_t* q = reinterpret_cast<int8_t*>(buffer + m + m * w.groups);
  quantize_rows_int8(call.out.dtype, call.x, m, w.cols, w.kp, q, scale);
  group_sums(w, q, m, xsum);
  Lut4QuantActs acts{q, scale, xsum};
  run_row_blocks(w, m, num_threads, [&](int64_t rb0, int64_t rb1) { k.dynamic(w, acts, m, rb0, rb1, call.out); });

  rerun_nonfinite_tokens(call.x, m, w.cols, w.kp, w.rows, scale, call.out, [&](const float* row, const LinearOutput& out) {
    Lut4FloatActs one{row};
    run_row_blocks(w, 1, num_threads, [&](int64_t rb0, int64_t rb1) { k.weight_only(w, one, 1, rb0, rb1, out); });
  });
}

}  // namespace sparseinfer
