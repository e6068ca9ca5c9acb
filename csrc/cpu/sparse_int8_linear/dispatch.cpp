// Threaded driver for sparse_int8_linear: chooses the ISA tier, lays x out once per call
// (quantized per token with int8_linear's code for act = dynamic, fp32 for act = none) and
// shares the row pairs among threads in pieces taken from a counter.
#include "../driver_common.h"
#include "common.h"
#include "sparseinfer/cpu_features.h"
#include "sparseinfer/int8_linear.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {
namespace {

constexpr int64_t kMinWorkPerThread = 1 << 17;  // stored slots x tokens below which a call stays on one thread

// No avx512 entries: those tiers run the avx2 kernels (fallbacks: isa_table.h).
constexpr auto kKernels = cpu::kernel_table<SpI8Kernels>({
    {cpu::Isa::reference, &spi8_kernels_reference},
#if SPARSEINFER_X86
    {cpu::Isa::avx2, &spi8_kernels_avx2},
#endif
});
static_assert(cpu::has_reference(kKernels));

const SpI8Kernels& active_kernels() { return cpu::pick_kernels(kKernels, cpu::active_isa()); }

template <class F>
void run_row_pairs(const PackedSparseInt8& w, int64_t m, int num_threads, F&& body) {
  run_unit_chunks(w.row_pairs, w.steps * kSpI8StepSlots * m, kMinWorkPerThread, num_threads, body);
}

}  // namespace

const char* sparse_int8_linear_path(SpI8Act act, int64_t /*m*/) {
  const bool avx2 = &active_kernels() != &spi8_kernels_reference;
  if (act == SpI8Act::dynamic) return avx2 ? "avx2_dynamic" : "reference_dynamic";
  return avx2 ? "avx2_float" : "reference_float";
}

void sparse_int8_linear(const SparseInt8LinearCall& call, int num_threads) {
  const PackedSparseInt8& w = call.w;
  const int64_t m = call.m;
  if (m == 0 || w.rows == 0) return;
  const SpI8Kernels& k = active_kernels();

  if (call.act == SpI8Act::none) {
    float* x = scratch_floats(kDriverScratch, m * w.kp);
    rows_to_f32(call.out.dtype, call.x, m, w.cols, w.kp, x);
    run_row_pairs(w, m, num_threads, [&](int64_t p0, int64_t p1) { k.weight_only(w, x, m, p0, p1, call.out); });
    return;
  }

  float* buffer = scratch_floats(kDriverScratch, m + m * w.kp / 4 + 1);
  float* scale = buffer;
  int8_t* q = reinterpret_cast<int8_t*>(buffer + m);
  quantize_rows_int8(call.out.dtype, call.x, m, w.cols, w.kp, q, scale);
  SpI8QuantActs acts{q, scale};
  run_row_pairs(w, m, num_threads, [&](int64_t p0, int64_t p1) { k.dynamic(w, acts, m, p0, p1, call.out); });

  rerun_nonfinite_tokens(call.x, m, w.cols, w.kp, w.rows, scale, call.out, [&](const float* row, const LinearOutput& out) {
    run_row_pairs(w, 1, num_threads, [&](int64_t p0, int64_t p1) { k.weight_only(w, row, 1, p0, p1, out); });
  });
}

}  // namespace sparseinfer
