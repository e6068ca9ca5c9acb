// pybind11 module `sparseinfer._C`. Takes raw pointers and sizes (no libtorch): python/sparseinfer/ops/
// validates every tensor first; the binding files re-check what can be seen and throw on anything odd.
#include <pybind11/pybind11.h>

#include "bind.h"
#include "sparseinfer/cpu_features.h"

PYBIND11_MODULE(_C, m) {
  using namespace sparseinfer;
  m.doc() = "sparseinfer native CPU kernels (raw pointers; use sparseinfer.ops)";
  bindings::bind_runtime(m);
  bindings::bind_csr_linear(m);
  bindings::bind_sparse24_linear(m);
  bindings::bind_int8_linear(m);
  bindings::bind_lut4_linear(m);
  bindings::bind_sparse_int8_linear(m);
  bindings::bind_decode_ops(m);

  // Fail at import, loudly, if SPARSEINFER_CPU_ISA names an ISA this CPU lacks.
  cpu::active_isa();
}
