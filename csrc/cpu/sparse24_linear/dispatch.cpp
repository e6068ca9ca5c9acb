// Threaded driver for sparse24_linear: chooses the ISA tier and the path, converts/lays out x
// once per call, and splits rows evenly across threads (every row costs the same).
#include <vector>

#include "common.h"
#include "sparseinfer/cpu_features.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {
namespace {

// m below this takes the row kernel (x chunks in registers, permute-picked); the rest vectorise
// along tokens. Chosen from bench/ measurements on AVX-512.
constexpr int64_t kTokensMinM = 9;
// Kept-value x token FMAs below which a call stays on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 16;
// Rows per unit of work handed to a thread.
constexpr int64_t kRowGrain = 16;

const Sparse24Kernels& kernels_for(cpu::Isa isa) {
  switch (isa) {
#if SPARSEINFER_X86
    case cpu::Isa::avx512: return sparse24_kernels_avx512;
    case cpu::Isa::avx2: return sparse24_kernels_avx2;
#endif
    default: return sparse24_kernels_reference;
  }
}

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
  const Sparse24Kernels& k = kernels_for(cpu::active_isa());
  const int64_t padded_cols = w.chunks * kS24ChunkCols;
  const int tasks = choose_tasks(w, m, num_threads);

  if (m < kTokensMinM) {
    float* x = scratch_floats<kDriverScratch>(m * padded_cols);
    rows_to_f32(w.dtype, call.x, m, w.cols, padded_cols, x);
    run_rows(w, tasks, [&](int64_t r0, int64_t r1) { k.rows(w, x, padded_cols, m, r0, r1, call.out); });
    return;
  }

  // Token path: x^T tiles of up to lanes * max_vecs tokens, packed once per call.
  const int64_t widest = int64_t(k.lanes) * k.max_vecs;
  struct Tile {
    int64_t t0, mt;
    int vecs;
    int64_t offset;
  };
  std::vector<Tile> tiles;
  int64_t total = 0;
  for (int64_t t0 = 0; t0 < m; t0 += widest) {
    int64_t mt = std::min(widest, m - t0);
    int vecs = 1;  // a power of 2: the kernels address x^T columns with shifts
    while (vecs * k.lanes < mt) vecs *= 2;
    tiles.push_back({t0, mt, vecs, total});
    total += padded_cols * vecs * k.lanes;
  }
  float* xt = scratch_floats<kDriverScratch>(total);
  const int pack_tasks = static_cast<int>(
      std::min<int64_t>(num_threads, std::max<int64_t>(1, m * w.cols / kMinWorkPerThread)));
  cpu::parallel_for_tasks(pack_tasks, [&](int t, int n) {
    int64_t c0 = padded_cols * t / n, c1 = padded_cols * (t + 1) / n;
    for (const Tile& tile : tiles)
      pack_tokens(w.dtype, call.x, w.cols, tile.t0, tile.mt, int64_t(tile.vecs) * k.lanes, c0, c1,
                  xt + tile.offset);
  });
  run_rows(w, tasks, [&](int64_t r0, int64_t r1) {
    for (const Tile& tile : tiles)
      k.tokens(w, xt + tile.offset, tile.vecs, tile.t0, tile.mt, r0, r1, call.out);
  });
}

}  // namespace sparseinfer
