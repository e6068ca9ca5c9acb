// _C decode-loop ops: rms_norm_f32, rope_f32 (pointers checked by sparseinfer/ops/decode.py).
#include <pybind11/pybind11.h>

#include "bind.h"
#include "common.h"
#include "sparseinfer/decode_ops.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

void rms_norm(uintptr_t x, uintptr_t w, uintptr_t y, int64_t rows, int64_t cols, double eps) {
  constexpr const char* op = "rms_norm_f32";
  require(rows >= 0 && cols >= 0, op, "negative size");
  require(rows * cols == 0 || (x && w && y), op, "null pointer");
  py::gil_scoped_release release;
  rms_norm_f32(ptr<const float>(x), ptr<const float>(w), ptr<float>(y), rows, cols, static_cast<float>(eps));
}

void rope(uintptr_t x, uintptr_t cos, uintptr_t sin, uintptr_t y, int64_t tokens, int64_t heads, int64_t dim) {
  constexpr const char* op = "rope_f32";
  require(tokens >= 0 && heads >= 0 && dim >= 0 && dim % 2 == 0, op, "bad sizes (dim must be even)");
  require(tokens * heads * dim == 0 || (x && cos && sin && y), op, "null pointer");
  py::gil_scoped_release release;
  rope_f32(ptr<const float>(x), ptr<const float>(cos), ptr<const float>(sin), ptr<float>(y), tokens, heads, dim);
}

}  // namespace

void bind_decode_ops(py::module_& m) {
  m.def("rms_norm_f32", &rms_norm, py::arg("x"), py::arg("w"), py::arg("y"), py::arg("rows"), py::arg("cols"),
        py::arg("eps"));
  m.def("rope_f32", &rope, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("y"), py::arg("tokens"),
        py::arg("heads"), py::arg("dim"));
}

}  // namespace sparseinfer::bindings
