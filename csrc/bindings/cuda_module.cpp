// pybind11 module `sparseinfer._cuda`: device pointers, sizes and a stream handle in (no libtorch).
// python/sparseinfer/ops/ validates every tensor first; the binding files (bindings/cuda/)
// re-check what can be seen and throw on anything odd (ValueError / RuntimeError in Python).
#include <pybind11/pybind11.h>

#include "bind.h"

PYBIND11_MODULE(_cuda, mod) {
  using namespace sparseinfer;
  mod.doc() = "sparseinfer CUDA kernels (device pointers in; validated by sparseinfer.ops)";
  bindings::bind_cuda_csr_linear(mod);
  bindings::bind_cuda_sparse24_linear(mod);
  bindings::bind_cuda_info(mod);
}
