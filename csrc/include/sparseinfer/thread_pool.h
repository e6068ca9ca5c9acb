// Parallel regions run on the process's OpenMP team when one is loaded (torch's), else on our
// own persistent worker pool. Threads are created only when the requested count changes
// (Python passes torch.get_num_threads() on every call), never per call. Task t runs on worker t
// (the caller takes task 0) unless that worker is late: the caller then runs it, so a worker that
// cannot get a core delays nothing. Idle workers spin briefly, then sleep on a futex.
#pragma once
#include <cstdint>
#include <string>

namespace sparseinfer::cpu {

using TaskFn = void (*)(void* ctx, int task, int n_tasks);

// Runs fn(ctx, t, n_tasks) for t in [0, n_tasks) on n_tasks threads and waits for all.
// Reentrant calls or calls from a second Python thread while busy run serially inline.
void parallel_run(int n_tasks, TaskFn fn, void* ctx);

template <class F>
void parallel_for_tasks(int n_tasks, F&& body) {
  parallel_run(
      n_tasks, [](void* ctx, int t, int n) { (*static_cast<F*>(ctx))(t, n); },
      static_cast<void*>(&body));
}

int pool_size();  // workers + caller currently alive (our own pool; 1 while OpenMP runs the work)

// Where parallel regions run: "openmp:<library path>" (the OpenMP team torch itself uses, found
// among the loaded libraries) or "pool" (our own threads). SPARSEINFER_THREADING=auto|openmp|pool
// chooses at first use; set_threading_backend overrides ("auto" re-reads the variable).
std::string threading_backend();
void set_threading_backend(const std::string& name);

// Threads the next parallel_run may use (Python passes torch.get_num_threads()).
void set_num_threads(int n);
int num_threads();

}  // namespace sparseinfer::cpu
