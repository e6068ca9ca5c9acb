// Threaded driver for sparse24_linear: chooses the ISA tier and the path, converts/lays out x
// once per call, and splits rows evenly across threads (every row costs the same).
#include "../driver_common.h"
#include "common.h"
#include "sparseinfer/cpu_features.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {
namespace {

// m below this takes the row kernel (x chunks in registers, permute-picked); the rest vectorise
// along tokens. Chosen from bench/ measurements on AVX-512.
constexpr int64_t kTokensMinM = 16;
// Kept-value x token FMAs below which a call stays on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 16;
// Rows per unit of work handed to a thread.
constexpr int64_t kRowGrain = 16;

// Tiers above avx512 run the avx512 kernels (fallbacks: isa_table.h).
constexpr auto kKernels = cpu::kernel_table<Sparse24Kernels>({
    {cpu::Isa::reference, &sparse24_kernels_reference},
#if SPARSEINFER_X86
    {cpu::Isa::avx2, &sparse24_kernels_avx2},
    {cpu::Isa::avx512, &sparse24_kernels_avx512},
#endif
});
static_assert(cpu::has_reference(kKernels));

const Sparse24Kernels& active_kernels() { return cpu::pick_kernels(kKernels, cpu::active_isa()); }

int choose_tasks(const PackedSparse24& w, int64_t m, int num_threads) {
  const int64_t units = (w.rows + kRowGrain - 1) / kRowGrain;
  const int64_t work = w.rows * w.chunks * kS24ChunkKept * m;
  const int64_t by_work = std::max<int64_t>(1, work / kMinWorkPerThread);
  return static_cast<int>(std::min<int64_t>({num_threads, units, by_work}));
}

// body(r0, r1) on each task's share of rows, split in whole grains.
template <class F>
void run_rows(const PackedSparse24& w, int tasks, F&& body) {
  const int64_t units = (w.rows + kRowGrain - 1) / kRowGrain;
  cpu::parallel_for_tasks(tasks, [&](int t, int n) {
    int64_t r0 = std::min(w.rows, units * t / n * kRowGrain);
    int64_t r1 = std::min(w.rows, units * (t + 1) / n * kRowGrain);
    if (r0 < r1) body(r0, r1);
  });
}

}  // namespace

const char* sparse24_linear_path(int64_t m) { return m < kTokensMinM ? "rows" : "tokens"; }

void sparse24_linear(const Sparse24LinearCall& call, int num_threads) {
  const PackedSparse24& w = call.w;
  const int64_t m = call.m;
  if (m == 0 || w.rows == 0) return;
  const Sparse24Kernels& k = active_kernels();
  const int64_t padded_cols = w.chunks * kS24ChunkCols;
  const int tasks = choose_tasks(w, m, num_threads);

  if (m < kTokensMinM) {
    float* x = scratch_floats(kDriverScratch, m * padded_cols);
    rows_to_f32(w.dtype, call.x, m, w.cols, padded_cols, x);
    run_rows(w, tasks, [&](int64_t r0, int64_t r1) { k.rows(w, x, padded_cols, m, r0, r1, call.out); });
    return;
  }

  // Token path: vecs a power of 2, as the kernels address x^T columns with shifts.
  const TokenTiles tiles = pack_token_tiles(w.dtype, call.x, m, w.cols, padded_cols, k.lanes,
                                            k.max_vecs, true, num_threads, kMinWorkPerThread);
  run_rows(w, tasks, [&](int64_t r0, int64_t r1) {
    for (const TokenTile& tile : tiles.tiles)
      k.tokens(w, tiles.xt + tile.offset, tile.vecs, tile.t0, tile.mt, r0, r1, call.out);
  });
}

}  // namespace sparseinfer
