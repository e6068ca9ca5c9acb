#include "sparseinfer/thread_pool.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <memory>
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

// Task t belongs to worker t (the caller owns task 0), so in the usual case every thread works on
// the same slice of the weights call after call and finds it in its own cache. But a task must be
// claimed before it runs, and once the caller has finished its own task it claims (steals) every
// task not yet claimed: when a worker cannot get a core (torch's OpenMP threads keep spinning for
// a while after every dense op), the caller runs that task itself instead of waiting a scheduler
// time slice for the worker.
struct Pool {
  std::mutex busy;  // held by the caller for a whole run
  std::vector<std::thread> workers;
  // claims[t] = generation << 1 | taken: a claim is a CAS from (gen, open) to (gen, taken), so a
  // worker that wakes late, for a run already over, can never claim a task of a newer run.
  std::unique_ptr<std::atomic<uint64_t>[]> claims;
  std::atomic<uint32_t> generation{0};
  std::atomic<int> sleepers{0};
  std::atomic<int> done{0};
  std::atomic<bool> stopping{false};
  TaskFn fn = nullptr;
  void* ctx = nullptr;
  int n_tasks = 0;

  // Runs task t of run `gen` if nobody has claimed it yet. fn/ctx/n_tasks were written before the
  // generation was published, and a successful claim proves the run is still open (the caller
  // waits for this task), so the values read are this run's.
  bool try_run(int task, uint32_t gen) {
    TaskFn f = fn;
    void* c = ctx;
    int n = n_tasks;
    if (task >= n) return false;
    uint64_t open = static_cast<uint64_t>(gen) << 1;
    if (!claims[task].compare_exchange_strong(open, open | 1)) return false;
    f(c, task, n);
    done.fetch_add(1, std::memory_order_release);
    return true;
  }

  void worker_loop(int id, uint32_t seen) {
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
      try_run(id, seen);
    }
  }

  void resize(int n_workers) {
    if (static_cast<int>(workers.size()) == n_workers) return;
    stop_all();
    stopping.store(false);
    claims.reset(new std::atomic<uint64_t>[n_workers + 1]);
    for (int t = 0; t <= n_workers; ++t) claims[t].store(1);  // taken in generation 0: no run open
    for (int i = 0; i < n_workers; ++i) {
      uint32_t seen = generation.load();
      workers.emplace_back([this, i, seen] { worker_loop(i + 1, seen); });
    }
  }

  void stop_all() {
    stopping.store(true);
    generation.fetch_add(1);
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
    for (int t = 0; t < tasks; ++t) claims[t].store(static_cast<uint64_t>(gen) << 1);
    generation.store(gen);  // opens the run, then wakes the workers
    if (sleepers.load() > 0) generation.notify_all();
    try_run(0, gen);
    for (int t = 1; t < tasks; ++t) try_run(t, gen);  // steal what no worker has started
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
