// Memory read bandwidth, the batch-1 decode roofline: each thread streams its share of a buffer
// with 256-bit loads where the CPU has AVX2 (a scalar or SSE2 loop stays ~25% below what GEMV
// kernels read on the same machine), else 64-bit words.
#include "sparseinfer/bandwidth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "sparseinfer/cpu_features.h"
#include "sparseinfer/thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace sparseinfer::cpu {
namespace {

uint64_t read_words(const uint64_t* p, int64_t words) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (int64_t i = 0; i + 4 <= words; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  return a + b + c + d;
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2"))) uint64_t read_avx2(const uint64_t* p, int64_t words) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  const auto* v = reinterpret_cast<const __m256i*>(p);
  const int64_t vecs = words / 4 / 4 * 4;
  for (int64_t i = 0; i < vecs; i += 4) {
    acc0 = _mm256_add_epi64(acc0, _mm256_loadu_si256(v + i));
    acc1 = _mm256_add_epi64(acc1, _mm256_loadu_si256(v + i + 1));
    acc2 = _mm256_add_epi64(acc2, _mm256_loadu_si256(v + i + 2));
    acc3 = _mm256_add_epi64(acc3, _mm256_loadu_si256(v + i + 3));
  }
  __m256i sum = _mm256_add_epi64(_mm256_add_epi64(acc0, acc1), _mm256_add_epi64(acc2, acc3));
  return static_cast<uint64_t>(_mm256_extract_epi64(sum, 0) + _mm256_extract_epi64(sum, 3));
}
#endif

uint64_t read_streams(const uint64_t* p, int64_t words) {
#if defined(__x86_64__) || defined(__i386__)
  if (cpu_features().avx2) return read_avx2(p, words);
#endif
  return read_words(p, words);
}

}  // namespace

double read_bandwidth_gbs(const void* buffer, int64_t bytes, int threads, int reps) {
  const int64_t words = bytes / 8 / (16 * threads) * (16 * threads);
  const auto* data = static_cast<const uint64_t*>(buffer);
  std::vector<double> seconds;
  std::atomic<uint64_t> sink{0};  // the sums go somewhere observable: the reads stay
  for (int r = 0; r < reps + 1; ++r) {
    auto start = std::chrono::steady_clock::now();
    parallel_for_tasks(threads, [&](int t, int n) {
      const int64_t share = words / n;
      sink.fetch_add(read_streams(data + t * share, share), std::memory_order_relaxed);
    });
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (r > 0) seconds.push_back(took.count());  // the first pass faults pages in
  }
  std::sort(seconds.begin(), seconds.end());
  return static_cast<double>(words) * 8 / seconds.front() / 1e9;
}

}  // namespace sparseinfer::cpu
