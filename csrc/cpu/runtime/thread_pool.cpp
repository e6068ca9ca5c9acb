#include "sparseinfer/thread_pool.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace sparseinfer::cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// How long an idle worker spins before sleeping: long enough to bridge the Python gap
// between two layers, short enough not to steal a core from the next dense op.
constexpr auto kSpin = std::chrono::microseconds(100);

// Tasks are claimed, not assigned: a run's tasks are handed out through one atomic counter that
// also carries the run's generation, and the caller claims tasks too. When a worker cannot get a
// core (torch's OpenMP threads keep spinning for a while after every dense op), the caller simply
// runs the remaining tasks itself instead of waiting a scheduler time slice for that worker.
struct Pool {
  std::mutex busy;  // held by the caller for a whole run
  std::vector<std::thread> workers;
  std::atomic<uint32_t> generation{0};
  std::atomic<uint64_t> claims{0};  // generation << 32 | next task to hand out
  std::atomic<int> sleepers{0};
  std::atomic<int> done{0};
  std::atomic<bool> stopping{false};
  TaskFn fn = nullptr;
  void* ctx = nullptr;
  int n_tasks = 0;

  // Runs tasks of run `gen` until none is left to claim (or a newer run has started).
  void claim_and_run(uint32_t gen) {
    uint64_t state = claims.load();
    for (;;) {
      if (static_cast<uint32_t>(state >> 32) != gen) return;
      int task = static_cast<int>(state & 0xffffffffu);
      // fn/ctx/n_tasks were written before the generation was published; a successful claim
      // proves the run is still open, so they are this run's values.
      TaskFn f = fn;
      void* c = ctx;
      int n = n_tasks;
      if (task >= n) return;
      if (!claims.compare_exchange_weak(state, state + 1)) continue;
      f(c, task, n);
      done.fetch_add(1, std::memory_order_release);
      state = claims.load();
    }
  }

  void worker_loop(uint32_t seen) {
    for (;;) {
      auto start = std::chrono::steady_clock::now();
      int spins = 0;
      while (generation.load() == seen) {
        cpu_relax();
        if (++spins % 64 == 0 && std::chrono::steady_clock::now() - start > kSpin) {
          sleepers.fetch_add(1);
          generation.wait(seen);
          sleepers.fetch_sub(1);
        }
      }
      seen = generation.load();
      if (stopping.load()) return;
      claim_and_run(seen);
    }
  }

  void resize(int n_workers) {
    if (static_cast<int>(workers.size()) == n_workers) return;
    stop_all();
    stopping.store(false);
    for (int i = 0; i < n_workers; ++i) {
      uint32_t seen = generation.load();
      workers.emplace_back([this, seen] { worker_loop(seen); });
    }
  }

  void stop_all() {
    stopping.store(true);
    uint32_t gen = generation.fetch_add(1) + 1;
    claims.store(static_cast<uint64_t>(gen) << 32);
    generation.notify_all();
    for (auto& w : workers) w.join();
    workers.clear();
  }

  void run(int tasks, TaskFn f, void* c) {
    fn = f;
    ctx = c;
    n_tasks = tasks;
    done.store(0);
    uint32_t gen = generation.load() + 1;
    claims.store(static_cast<uint64_t>(gen) << 32);  // opens the run's tasks...
    generation.store(gen);                              // ...then wakes the workers
    if (sleepers.load() > 0) generation.notify_all();
    claim_and_run(gen);
    while (done.load(std::memory_order_acquire) < tasks) cpu_relax();
  }
};

Pool* g_pool = nullptr;
std::atomic<int> g_requested{1};

void reset_after_fork() {
  // The child has none of the parent's threads: forget them (never join) and start afresh.
  g_pool = new Pool();
}

Pool& pool() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_pool = new Pool();
    pthread_atfork(nullptr, nullptr, reset_after_fork);
  });
  return *g_pool;
}

}  // namespace

void set_num_threads(int n) { g_requested.store(n < 1 ? 1 : n); }
int num_threads() { return g_requested.load(); }

void parallel_run(int n_tasks, TaskFn fn, void* ctx) {
  if (n_tasks <= 1) {
    if (n_tasks == 1) fn(ctx, 0, 1);
    return;
  }
  Pool& p = pool();
  std::unique_lock<std::mutex> lock(p.busy, std::try_to_lock);
  if (!lock.owns_lock()) {  // nested or concurrent call: run serially rather than oversubscribe
    for (int t = 0; t < n_tasks; ++t) fn(ctx, t, n_tasks);
    return;
  }
  int want_workers = g_requested.load() - 1;
  if (want_workers < n_tasks - 1) want_workers = n_tasks - 1;
  p.resize(want_workers);
  p.run(n_tasks, fn, ctx);
}

int pool_size() { return g_pool ? static_cast<int>(g_pool->workers.size()) + 1 : 1; }

}  // namespace sparseinfer::cpu
