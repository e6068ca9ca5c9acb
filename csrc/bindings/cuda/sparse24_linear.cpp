// _cuda 2:4 functions: sparse24_linear, sparse24_to_dense.
#include <pybind11/pybind11.h>

#include "../bind.h"
#include "../common.h"
#include "sparseinfer/cuda_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

cuda::Sparse24CudaWeight s24_weight(const char* op, int dtype, int64_t rows, int64_t cols,
                                    uintptr_t values, uintptr_t meta) {
  require(rows >= 0 && cols >= 0, op, "negative size");
  require(rows < (int64_t(1) << 31) && cols < (int64_t(1) << 31), op, "weight too large");
  require(values && meta, op, "null pointer");
  require(aligned16(values) && aligned16(meta), op, "values/meta must be 16-byte aligned");
  cuda::Sparse24CudaWeight w;
  w.rows = rows;
  w.cols = cols;
  w.row_tiles = (rows + cuda::kS24TileRows - 1) / cuda::kS24TileRows;
  w.k_pairs = (cols + cuda::kS24PairCols - 1) / cuda::kS24PairCols;
  w.dtype = dtype_from_code(dtype, op);
  w.values = ptr<const void>(values);
  w.meta = ptr<const uint32_t>(meta);
  return w;
}

void linear(int64_t m, uintptr_t x, int64_t ldx, uintptr_t y, uintptr_t bias, int dtype,
            int64_t rows, int64_t cols, uintptr_t values, uintptr_t meta, uintptr_t stream, int path) {
  const char* op = "sparse24_linear (CUDA)";
  require(m >= 0, op, "negative m");
  require(ldx >= cols && ldx % 8 == 0, op, "ldx must be >= cols and a multiple of 8");
  require(path >= 0 && path <= 2, op, "path must be 0 (auto), 1 (split-K) or 2 (tiled)");
  const cuda::Sparse24CudaWeight w = s24_weight(op, dtype, rows, cols, values, meta);
  require(w.dtype != DType::f32, op, "the CUDA 2:4 kernels take fp16 or bf16");
  if (m == 0 || rows == 0) return;
  require(x && y, op, "null pointer");
  require(aligned16(x), op, "x must be 16-byte aligned");
  cuda::sparse24_linear(m, ptr<const void>(x), ldx, ptr<void>(y), ptr<const void>(bias), w,
                        ptr<void>(stream), static_cast<cuda::S24Path>(path));
}

void to_dense(uintptr_t dense, int dtype, int64_t rows, int64_t cols, uintptr_t values,
              uintptr_t meta, uintptr_t stream) {
  const char* op = "sparse24_to_dense (CUDA)";
  const cuda::Sparse24CudaWeight w = s24_weight(op, dtype, rows, cols, values, meta);
  require(dense || rows * cols == 0, op, "null pointer");
  cuda::sparse24_to_dense(ptr<void>(dense), w, ptr<void>(stream));
}

}  // namespace

void bind_cuda_sparse24_linear(py::module_& mod) {
  mod.def("sparse24_linear", &linear, py::arg("m"), py::arg("x"), py::arg("ldx"), py::arg("y"),
          py::arg("bias"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("values"),
          py::arg("meta"), py::arg("stream"), py::arg("path") = 0);
  mod.def("sparse24_to_dense", &to_dense, py::arg("dense"), py::arg("dtype"), py::arg("rows"),
          py::arg("cols"), py::arg("values"), py::arg("meta"), py::arg("stream"));
}

}  // namespace sparseinfer::bindings
