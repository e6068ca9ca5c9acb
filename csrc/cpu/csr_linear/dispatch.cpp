// Threaded driver for csr_linear: chooses the ISA tier and the path, converts/lays out x once,
// and splits row blocks across threads by non-zeros.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../driver_common.h"
#include "common.h"
#include "sparseinfer/cpu_features.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {
namespace {

// m below this takes a row kernel (expand if a bitmask was packed, else gather); the rest
// vectorise along tokens. Chosen from bench/ measurements on AVX-512.
constexpr int64_t kTokensMinM = 4;
// Work (non-zero x token FMAs) below which a call stays on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 16;
// Per (row, panel) overhead, in non-zero equivalents, when balancing blocks across threads.
constexpr int64_t kRowPanelCost = 2;

// Tiers above avx512 run the avx512 kernels (fallbacks: isa_table.h).
constexpr auto kKernels = cpu::kernel_table<CsrKernels>({
    {cpu::Isa::reference, &csr_kernels_reference},
#if SPARSEINFER_X86
    {cpu::Isa::avx2, &csr_kernels_avx2},
    {cpu::Isa::avx512, &csr_kernels_avx512},
#endif
});
static_assert(cpu::has_reference(kKernels));

const CsrKernels& active_kernels() { return cpu::pick_kernels(kKernels, cpu::active_isa()); }

int64_t block_cost(const PackedCsr& w, int64_t b) {
  return w.block_nnz_prefix[b] + b * kRowBlock * w.panels * kRowPanelCost;
}

// Task t of n gets row blocks [first, last) with roughly equal cost.
struct BlockSplit {
  const PackedCsr& w;
  int n;
  int64_t split(int t) const {
    if (t <= 0) return 0;
    if (t >= n) return w.row_blocks;
    int64_t target = block_cost(w, w.row_blocks) * t / n;
    int64_t lo = 0, hi = w.row_blocks;
    while (lo < hi) {  // first block whose starting cost reaches target
      int64_t mid = (lo + hi) / 2;
      if (block_cost(w, mid) < target) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
};

int choose_tasks(const PackedCsr& w, int64_t m, int num_threads) {
  int64_t work = (w.block_nnz_prefix[w.row_blocks] + w.rows * w.panels * kRowPanelCost) * m;
  int64_t by_work = std::max<int64_t>(1, work / kMinWorkPerThread);
  return static_cast<int>(std::min<int64_t>({num_threads, w.row_blocks, by_work}));
}

template <class F>
void run_blocks(const PackedCsr& w, int tasks, F&& body) {
  BlockSplit split{w, tasks};
  cpu::parallel_for_tasks(tasks, [&](int t, int) {
    int64_t b0 = split.split(t), b1 = split.split(t + 1);
    if (b0 < b1) body(b0, b1);
  });
}

bool use_row_kernels(int64_t m) { return m < kTokensMinM; }

}  // namespace

const char* csr_linear_path(int64_t m, bool has_bitmask) {
  if (use_row_kernels(m)) return has_bitmask ? "rows_expand" : "rows_gather";
  return "tokens";
}

void csr_linear(const CsrLinearCall& call, int num_threads) {
  const int64_t m = call.m;
  if (m == 0 || call.w.rows == 0) return;
  PackedCsr w = call.w;
  int mask_error = 0;  // PackedCsr::mask_error: the bitmask kernels' report of an inconsistent mask
  w.mask_error = &mask_error;
  const CsrKernels& k = active_kernels();
  const int64_t padded_cols = w.panels * kPanelCols + kXPad;
  const int tasks = choose_tasks(w, m, num_threads);

  if (use_row_kernels(m)) {
    float* xbuf = scratch_floats(kDriverScratch, m * padded_cols);
    rows_to_f32(w.dtype, call.x, m, w.cols, padded_cols, xbuf);
    RowsKernel kernel = w.bitmask ? k.rows_expand : k.rows_gather;
    const float* x = xbuf;
    run_blocks(w, tasks, [&](int64_t b0, int64_t b1) {
      kernel(w, x, padded_cols, m, b0, b1, call.out);
    });
    if (__atomic_load_n(&mask_error, __ATOMIC_RELAXED))
      throw std::invalid_argument("csr_linear: bitmask is inconsistent with counts (a row's popcount differs)");
    return;
  }

  const TokenTiles tiles = pack_token_tiles(w.dtype, call.x, m, w.cols, padded_cols, k.lanes,
                                            k.max_vecs, false, num_threads, kMinWorkPerThread);
  run_blocks(w, tasks, [&](int64_t b0, int64_t b1) {
    for (const TokenTile& tile : tiles.tiles)
      k.tokens(w, tiles.xt + tile.offset, tile.vecs, tile.t0, tile.mt, b0, b1, call.out);
  });
}

}  // namespace sparseinfer
