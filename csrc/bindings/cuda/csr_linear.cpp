// _cuda CSR functions: csr_linear, csr_tokens_per_pass, csr_to_dense.
#include <pybind11/pybind11.h>

#include "../bind.h"
#include "../common.h"
#include "sparseinfer/cuda_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

cuda::CsrCudaWeight csr_weight(const char* op, int dtype, int64_t rows, int64_t cols,
                               uintptr_t values, uintptr_t index, uintptr_t seg_ptr) {
  require(rows >= 0 && cols >= 0, op, "negative size");
  require(rows < (int64_t(1) << 31) && cols < (int64_t(1) << 31), op, "weight too large");
  require(seg_ptr && values && index, op, "null pointer");
  require(aligned16(values) && aligned16(index), op, "values/index must be 16-byte aligned");
  cuda::CsrCudaWeight w;
  w.rows = rows;
  w.cols = cols;
  w.segs = (cols + cuda::kCsrSegCols - 1) / cuda::kCsrSegCols;
  w.dtype = dtype_from_code(dtype, op);
  w.values = ptr<const void>(values);
  w.index = ptr<const uint16_t>(index);
  w.seg_ptr = ptr<const int32_t>(seg_ptr);
  return w;
}

void linear(int64_t m, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
            int64_t cols, uintptr_t values, uintptr_t index, uintptr_t seg_ptr, uintptr_t stream) {
  const char* op = "csr_linear (CUDA)";
  require(m >= 0, op, "negative m");
  const cuda::CsrCudaWeight w = csr_weight(op, dtype, rows, cols, values, index, seg_ptr);
  if (m == 0 || rows == 0) return;
  require(x && y, op, "null pointer");
  cuda::csr_linear(m, ptr<const void>(x), ptr<void>(y), ptr<const void>(bias), w, ptr<void>(stream));
}

void to_dense(uintptr_t dense, int dtype, int64_t rows, int64_t cols, uintptr_t values,
              uintptr_t index, uintptr_t seg_ptr, uintptr_t stream) {
  const char* op = "csr_to_dense (CUDA)";
  const cuda::CsrCudaWeight w = csr_weight(op, dtype, rows, cols, values, index, seg_ptr);
  require(dense || rows * cols == 0, op, "null pointer");
  cuda::csr_to_dense(ptr<void>(dense), w, ptr<void>(stream));
}

}  // namespace

void bind_cuda_csr_linear(py::module_& mod) {
  mod.def("csr_linear", &linear, py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"),
          py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("index"),
          py::arg("seg_ptr"), py::arg("stream"));
  mod.def("csr_tokens_per_pass", [](int64_t m, int dtype) {
    return cuda::csr_tokens_per_pass(m, dtype_from_code(dtype, "csr_tokens_per_pass"));
  });
  mod.def("csr_to_dense", &to_dense, py::arg("dense"), py::arg("dtype"), py::arg("rows"),
          py::arg("cols"), py::arg("values"), py::arg("index"), py::arg("seg_ptr"), py::arg("stream"));
}

}  // namespace sparseinfer::bindings
