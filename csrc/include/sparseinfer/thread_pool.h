// A persistent worker pool. Threads are created only when the requested count changes
// (Python passes torch.get_num_threads() on every call), never per call. Task t runs on worker t
// (the caller takes task 0) unless that worker is late: the caller then runs it, so a worker that
// cannot get a core delays nothing. Idle workers spin briefly, then sleep on a futex.
#pragma once
#include <cstdint>

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

int pool_size();  // workers + caller currently alive

// Threads the next parallel_run may use (Python passes torch.get_num_threads()).
void set_num_threads(int n);
int num_threads();

}  // namespace sparseinfer::cpu
