// Canonical sparse-bitmask -> CSR kernel layout (see csr_linear.h), in one pass over the
// non-zeros: each row's values are contiguous in `compressed`, and the bitmask bytes of a row
// inside a panel give the panel-local columns in order, so no sort is needed. Portable code
// (no ISA flags): it is memory-bound and runs once per layer at load.
#include <algorithm>
#include <cstring>

#include "sparseinfer/csr_linear.h"
#include "sparseinfer/thread_pool.h"

namespace sparseinfer {

namespace {

template <class T>
void pack_rows(const CsrBitmaskPack& p, int64_t r0, int64_t r1) {
  const int64_t mask_bytes = (p.cols + 7) / 8;
  const int64_t panels = (p.cols + kPanelCols - 1) / kPanelCols;
  const T* compressed = static_cast<const T*>(p.compressed);
  T* values = static_cast<T*>(p.values);
  for (int64_t r = r0; r < r1; ++r) {
    const T* src = compressed + p.row_offsets[r];
    const uint8_t* mask = p.bitmask + r * mask_bytes;
    for (int64_t panel = 0; panel < panels; ++panel) {
      int64_t dst = p.cell_offsets[panel * p.rows + r];
      const int64_t b0 = panel * (kPanelCols / 8);
      const int64_t b1 = std::min(mask_bytes, b0 + kPanelCols / 8);
      for (int64_t b = b0; b < b1; ++b) {
        unsigned bits = mask[b];
        const unsigned base = static_cast<unsigned>((b - b0) * 8);
        while (bits) {
          const unsigned bit = static_cast<unsigned>(__builtin_ctz(bits));
          values[dst] = *src++;
          p.local_idx[dst++] = static_cast<uint8_t>(base + bit);
          bits &= bits - 1;
        }
      }
    }
  }
}

}  // namespace

void csr_pack_bitmask(const CsrBitmaskPack& p, int num_threads) {
  const int64_t rows_per_task = 256;
  const int tasks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(num_threads, (p.rows + rows_per_task - 1) / rows_per_task)));
  cpu::parallel_for_tasks(tasks, [&](int t, int n) {
    const int64_t r0 = p.rows * t / n, r1 = p.rows * (t + 1) / n;
    if (p.elem_bytes == 4)
      pack_rows<uint32_t>(p, r0, r1);
    else
      pack_rows<uint16_t>(p, r0, r1);
  });
}

}  // namespace sparseinfer
