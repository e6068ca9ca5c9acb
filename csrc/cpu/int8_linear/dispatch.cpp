// Threaded driver for int8_linear: chooses the ISA tier and the path, quantizes (W8A8) or
// converts (weight-only) x once per call, and splits row blocks evenly across threads.
#include <limits>
#include <vector>

#include "../driver_common.h"
#include "common.h"
#include "sparseinfer/cpu_features.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {
namespace {

// Multiply-adds below which a call stays on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 18;
constexpr int64_t kTileTokens = 16;

// No avx512 entry: AVX-512 without VNNI has no int8 dot product beyond AVX2's, so that tier
// falls back to the avx2 kernels (fallbacks: isa_table.h).
constexpr auto kKernels = cpu::kernel_table<Int8Kernels>({
    {cpu::Isa::reference, &int8_kernels_reference},
#if SPARSEINFER_X86
    {cpu::Isa::avx2, &int8_kernels_avx2},
    {cpu::Isa::avx512_vnni, &int8_kernels_avx512_vnni},
    {cpu::Isa::amx, &int8_kernels_amx},
#endif
});
static_assert(cpu::has_reference(kKernels));

const Int8Kernels& active_kernels() { return cpu::pick_kernels(kKernels, cpu::active_isa()); }

bool use_tiles(const Int8Kernels& k, int64_t m, int64_t groups, int64_t group_size) {
  return k.dynamic_tiles != nullptr && m >= k.tiles_min_m &&
         (groups == 1 || group_size % kInt8KBlock == 0);
}

// body(rb0, rb1) on each task's share of row blocks, split in units of `grain` blocks.
template <class F>
void run_row_blocks(const PackedInt8& w, int64_t m, int num_threads, int64_t grain, F&& body) {
  const int64_t units = (w.row_blocks + grain - 1) / grain;
  const int64_t work = w.rows * w.kp * m;
  const int tasks = static_cast<int>(std::min<int64_t>(
      {int64_t(num_threads), units, std::max<int64_t>(1, work / kMinWorkPerThread)}));
  cpu::parallel_for_tasks(tasks, [&](int t, int n) {
    const int64_t rb0 = std::min(w.row_blocks, units * t / n * grain);
    const int64_t rb1 = std::min(w.row_blocks, units * (t + 1) / n * grain);
    if (rb0 < rb1) body(rb0, rb1);
  });
}

// Output row of token t whose activations hold a NaN or an inf (int8_linear.h): the sum over
// its non-finite columns k of x[k] * (float(q[r][k]) * scale[r][group of k]), in fp32, plus bias.
// Every term is inf or NaN, so the order of the sum cannot change it (NaN if any term is NaN or
// infinities of both signs meet, else that infinity). Rare: runs only for such tokens.
void nonfinite_token(const PackedInt8& w, const Int8LinearCall& call, int64_t t, int num_threads) {
  const DType dt = call.out.dtype;
  const void* xt = static_cast<const char*>(call.x) + t * w.cols * dtype_size(dt);
  std::vector<int64_t> cols;
  bool nan = false;
  for (int64_t k = 0; k < w.cols; ++k) {
    const float v = load_as_f32(dt, xt, k);
    if (v != v) nan = true;
    else if (!int8_finite(v)) cols.push_back(k);
  }
  run_row_blocks(w, 1, num_threads, 1, [&](int64_t rb0, int64_t rb1) {
    const int64_t r1 = std::min(w.rows, rb1 * kInt8RowBlock);
    for (int64_t r = rb0 * kInt8RowBlock; r < r1; ++r) {
      float sum = std::numeric_limits<float>::quiet_NaN();  // a NaN times anything is NaN
      if (!nan) {
        sum = 0.f;
        for (int64_t k : cols) {
          const int64_t g = w.groups == 1 ? 0 : k / w.group_size;
          const float wk = static_cast<float>(weight_at(w, r, k)) *
                           w.scales[int8_group_cell(w, r / kInt8RowBlock, g) + r % kInt8RowBlock];
          sum = sum + load_as_f32(dt, xt, k) * wk;
          if (sum != sum) break;  // NaN stays NaN
        }
      }
      store_block(w.rows, call.out, r, 1, t, 1, &sum, 1, 1);
    }
  });
}

}  // namespace

const char* int8_linear_path(Int8Act act, int64_t m, int64_t groups, int64_t group_size) {
  const Int8Kernels& k = active_kernels();
  if (act == Int8Act::none)
    return k.weight_only_tiles_min_m > 0 && m >= k.weight_only_tiles_min_m ? "dequant_tiles" : "dequant_rows";
  return use_tiles(k, m, groups, group_size) ? k.tiles_path : k.rows_path;
}

void quantize_rows_int8(DType dtype, const void* x, int64_t m, int64_t cols, int64_t stride,
                        int8_t* q, float* scale) {
  const Int8Kernels& k = active_kernels();
  const int64_t row_bytes = cols * dtype_size(dtype);
  for (int64_t t = 0; t < m; ++t) {
    k.quantize_row(dtype, static_cast<const char*>(x) + t * row_bytes, cols, stride, q + t * stride, scale + t);
    if (k.u8_acts)
      for (int64_t c = 0; c < stride; ++c) q[t * stride + c] = static_cast<int8_t>(q[t * stride + c] ^ 0x80);
  }
}

void int8_linear(const Int8LinearCall& call, int num_threads) {
  const PackedInt8& w = call.w;
  const int64_t m = call.m;
  if (m == 0 || w.rows == 0) return;
  const Int8Kernels& k = active_kernels();

  if (call.act == Int8Act::none) {
    float* x = scratch_floats(kDriverScratch, m * w.kp);
    rows_to_f32(call.out.dtype, call.x, m, w.cols, w.kp, x);
    run_row_blocks(w, m, num_threads, 1, [&](int64_t rb0, int64_t rb1) {
      k.weight_only(w, x, 0, m, rb0, rb1, call.out);
    });
    return;
  }

  // Quantize every token once (rows padded to whole tiles of 16 for the AMX kernel).
  const bool tiles = use_tiles(k, m, w.groups, w.group_size);
  const int64_t m_p = (m + kTileTokens - 1) / kTileTokens * kTileTokens;
  float* buffer = scratch_floats(kDriverScratch, m_p + m_p * w.kp / 4);
  QuantizedActs acts;
  acts.scale = buffer;
  acts.q = reinterpret_cast<const int8_t*>(buffer + m_p);
  acts.stride = w.kp;
  int8_t* q = reinterpret_cast<int8_t*>(buffer + m_p);
  const int64_t row_bytes = w.cols * dtype_size(call.out.dtype);
  const int qtasks = static_cast<int>(std::min<int64_t>(num_threads, std::max<int64_t>(1, m * w.cols / (1 << 16))));
  cpu::parallel_for_tasks(qtasks, [&](int t, int n) {
    for (int64_t row = m_p * t / n; row < m_p * (t + 1) / n; ++row) {
      if (row < m) {
        k.quantize_row(call.out.dtype, static_cast<const char*>(call.x) + row * row_bytes, w.cols, w.kp,
                       q + row * w.kp, buffer + row);
      } else {
        std::fill(q + row * w.kp, q + (row + 1) * w.kp, int8_t(0));
        buffer[row] = 0.f;
      }
    }
  });
  if (tiles) {
    run_row_blocks(w, m, num_threads, 2, [&](int64_t rb0, int64_t rb1) {
      k.dynamic_tiles(w, acts, 0, m, rb0, rb1, call.out);
    });
  } else {
    run_row_blocks(w, m, num_threads, 1, [&](int64_t rb0, int64_t rb1) {
      k.dynamic_rows(w, acts, 0, m, rb0, rb1, call.out);
    });
  }
  // Tokens that could not be quantized (scale NaN or inf): the kernels wrote garbage rows for
  // them (their q is 0, their scale not finite); overwrite those rows.
  for (int64_t t = 0; t < m; ++t)
    if (!int8_finite(acts.scale[t])) nonfinite_token(w, call, t, num_threads);
}

}  // namespace sparseinfer
