#include "sparseinfer/thread_pool.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <memory>
#include <mutex>
#include <stdexcept>
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


// ---------------------------------------------------------------- the process's OpenMP runtime
// torch runs its ops on an OpenMP team (libgomp, or Intel's libiomp5, which exports the same GOMP
// entry points). After every torch op that team keeps spinning on the cores for a while, so a
// second pool of our own finds no free core and every layer waits for a scheduler slice. Running
// our parallel regions on that same team removes the contention: the spinning threads are the
// ones that pick up our tasks. The runtime is found among the libraries already loaded into the
// process (never loaded by us, so the build needs no torch and no OpenMP).
using GompParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpIntFn = int (*)();

struct OmpRuntime {
  GompParallelFn parallel = nullptr;
  OmpIntFn thread_num = nullptr;
  OmpIntFn num_threads = nullptr;
  OmpIntFn in_parallel = nullptr;
  std::string library;
  bool usable() const { return parallel && thread_num && num_threads && in_parallel; }
};

int find_omp_library(dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name == nullptr || *name == '\0') return 0;
  const char* base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  if (std::strncmp(base, "libgomp", 7) == 0 || std::strncmp(base, "libiomp5", 8) == 0) {
    *static_cast<std::string*>(out) = name;
    return 1;
  }
  return 0;
}

OmpRuntime resolve_omp() {
  OmpRuntime rt;
  std::string path;
  dl_iterate_phdr(find_omp_library, &path);
  if (path.empty()) return rt;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);  // already loaded: no load
  if (handle == nullptr) return rt;
  rt.parallel = reinterpret_cast<GompParallelFn>(dlsym(handle, "GOMP_parallel"));
  rt.thread_num = reinterpret_cast<OmpIntFn>(dlsym(handle, "omp_get_thread_num"));
  rt.num_threads = reinterpret_cast<OmpIntFn>(dlsym(handle, "omp_get_num_threads"));
  rt.in_parallel = reinterpret_cast<OmpIntFn>(dlsym(handle, "omp_in_parallel"));
  rt.library = path;
  if (!rt.usable()) rt = OmpRuntime{};
  return rt;  // the handle stays open: the library outlives every call
}

// SPARSEINFER_THREADING: auto (the process's OpenMP team when one is loaded, else our pool),
// openmp (the same; our pool if none is loaded) or pool.
enum class Backend { kUnresolved, kOpenMp, kPool };
std::atomic<Backend> g_backend{Backend::kUnresolved};
std::atomic<bool> g_forked{false};  // a forked child cannot use the parent's OpenMP team
OmpRuntime g_omp;
std::mutex g_backend_mutex;
std::string g_backend_request = "auto";

Backend resolve_backend() {
  Backend b = g_backend.load(std::memory_order_acquire);
  if (b != Backend::kUnresolved) return b;
  std::lock_guard<std::mutex> lock(g_backend_mutex);
  b = g_backend.load();
  if (b != Backend::kUnresolved) return b;
  std::string want = g_backend_request;
  if (want == "auto") {
    const char* env = std::getenv("SPARSEINFER_THREADING");
    if (env != nullptr && *env != '\0') want = env;
  }
  b = Backend::kPool;
  if (want != "pool" && !g_forked.load()) {
    g_omp = resolve_omp();
    if (g_omp.usable()) b = Backend::kOpenMp;
  }
  g_backend.store(b, std::memory_order_release);
  return b;
}

struct OmpCall {
  TaskFn fn;
  void* ctx;
  int n_tasks;
};

void omp_trampoline(void* data) {
  auto* call = static_cast<OmpCall*>(data);
  const int team = g_omp.num_threads();
  for (int t = g_omp.thread_num(); t < call->n_tasks; t += team) call->fn(call->ctx, t, call->n_tasks);
}

Pool* g_pool = nullptr;
std::atomic<int> g_requested{1};

void reset_after_fork() {
  // The child has none of the parent's threads: forget them (never join) and start afresh. libgomp
  // in a forked child would wait for the parent's team forever, so the child uses our pool.
  if (g_pool != nullptr) g_pool = new Pool();
  g_forked.store(true);
  if (g_backend.load() == Backend::kOpenMp) g_backend.store(Backend::kPool);
}

Pool& pool() {
  static std::once_flag once;
  std::call_once(once, [] { g_pool = new Pool(); });
  return *g_pool;
}

// Installed when the library loads, before any thread or OpenMP team exists.
[[maybe_unused]] const bool g_fork_handler_installed = pthread_atfork(nullptr, nullptr, reset_after_fork) == 0;

}  // namespace

void set_num_threads(int n) { g_requested.store(n < 1 ? 1 : n); }
int num_threads() { return g_requested.load(); }

void parallel_run(int n_tasks, TaskFn fn, void* ctx) {
  if (n_tasks <= 1) {
    if (n_tasks == 1) fn(ctx, 0, 1);
    return;
  }
  if (resolve_backend() == Backend::kOpenMp) {
    if (g_omp.in_parallel()) {  // inside a torch / OpenMP region: run serially, never nest teams
      for (int t = 0; t < n_tasks; ++t) fn(ctx, t, n_tasks);
      return;
    }
    OmpCall call{fn, ctx, n_tasks};
    g_omp.parallel(omp_trampoline, &call, static_cast<unsigned>(n_tasks), 0);
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

std::string threading_backend() {
  return resolve_backend() == Backend::kOpenMp ? "openmp:" + g_omp.library : "pool";
}

void set_threading_backend(const std::string& name) {
  if (name != "auto" && name != "openmp" && name != "pool")
    throw std::invalid_argument("threading backend must be 'auto', 'openmp' or 'pool', got '" + name + "'");
  std::lock_guard<std::mutex> lock(g_backend_mutex);
  g_backend_request = name == "auto" ? "auto" : name;
  g_backend.store(Backend::kUnresolved);
}

}  // namespace sparseinfer::cpu
