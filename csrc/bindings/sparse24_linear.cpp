// _C 2:4 functions: sparse24_linear, sparse24_linear_path.
#include <pybind11/pybind11.h>

#include <string>

#include "bind.h"
#include "common.h"
#include "sparseinfer/sparse24_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

void linear(int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
            int64_t cols, uintptr_t values, uintptr_t meta, int num_threads) {
  constexpr const char* op = "sparse24_linear";
  require(m_tokens >= 0, op, "negative number of tokens");
  require(num_threads >= 1, op, "num_threads must be >= 1");
  require(rows >= 0 && cols >= 0, op, "negative weight shape");
  Sparse24LinearCall call;
  call.w.rows = rows;
  call.w.cols = cols;
  call.w.chunks = (cols + kS24ChunkCols - 1) / kS24ChunkCols;
  call.w.dtype = dtype_from_code(dtype, op);
  require(rows == 0 || call.w.chunks == 0 || (values && meta), op, "null weight pointer");
  call.w.values = ptr<const void>(values);
  call.w.meta = ptr<const uint32_t>(meta);
  call.m = m_tokens;
  require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), op, "null activation/output pointer");
  call.x = ptr<const void>(x);
  call.out.y = ptr<void>(y);
  call.out.bias = ptr<const void>(bias);
  call.out.dtype = call.w.dtype;
  py::gil_scoped_release release;
  sparse24_linear(call, num_threads);
}

std::string path(int64_t m_tokens) { return sparse24_linear_path(m_tokens); }

}  // namespace

void bind_sparse24_linear(py::module_& m) {
  m.def("sparse24_linear", &linear, py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"),
        py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("meta"),
        py::arg("num_threads"));
  m.def("sparse24_linear_path", &path, py::arg("m"));
}

}  // namespace sparseinfer::bindings
