// pybind11 module `sparseinfer._cuda`: device pointers, sizes and a stream handle in (no libtorch).
// python/sparseinfer/ops.py validates every tensor first; here we re-check what can be seen and
// throw on anything odd (ValueError / RuntimeError in Python).
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "sparseinfer/cuda_linear.h"

namespace py = pybind11;
using namespace sparseinfer;

namespace {

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

DType dtype_from_code(int code, const char* op) {
  require(code >= 0 && code <= 2, op, "unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

bool aligned16(uintptr_t p) { return p % 16 == 0; }

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
  w.values = reinterpret_cast<const void*>(values);
  w.index = reinterpret_cast<const uint16_t*>(index);
  w.seg_ptr = reinterpret_cast<const int32_t*>(seg_ptr);
  return w;
}

void csr_linear(int64_t m, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
                int64_t cols, uintptr_t values, uintptr_t index, uintptr_t seg_ptr, uintptr_t stream) {
  const char* op = "csr_linear (CUDA)";
  require(m >= 0, op, "negative m");
  const cuda::CsrCudaWeight w = csr_weight(op, dtype, rows, cols, values, index, seg_ptr);
  if (m == 0 || rows == 0) return;
  require(x && y, op, "null pointer");
  cuda::csr_linear(m, reinterpret_cast<const void*>(x), reinterpret_cast<void*>(y),
                   reinterpret_cast<const void*>(bias), w, reinterpret_cast<void*>(stream));
}

void csr_to_dense(uintptr_t dense, int dtype, int64_t rows, int64_t cols, uintptr_t values,
                  uintptr_t index, uintptr_t seg_ptr, uintptr_t stream) {
  const char* op = "csr_to_dense (CUDA)";
  const cuda::CsrCudaWeight w = csr_weight(op, dtype, rows, cols, values, index, seg_ptr);
  require(dense || rows * cols == 0, op, "null pointer");
  cuda::csr_to_dense(reinterpret_cast<void*>(dense), w, reinterpret_cast<void*>(stream));
}

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
  w.values = reinterpret_cast<const void*>(values);
  w.meta = reinterpret_cast<const uint32_t*>(meta);
  return w;
}

void sparse24_linear(int64_t m, uintptr_t x, int64_t ldx, uintptr_t y, uintptr_t bias, int dtype,
                     int64_t rows, int64_t cols, uintptr_t values, uintptr_t meta, uintptr_t stream,
                     int path) {
  const char* op = "sparse24_linear (CUDA)";
  require(m >= 0, op, "negative m");
  require(ldx >= cols && ldx % 8 == 0, op, "ldx must be >= cols and a multiple of 8");
  require(path >= 0 && path <= 2, op, "path must be 0 (auto), 1 (split-K) or 2 (tiled)");
  const cuda::Sparse24CudaWeight w = s24_weight(op, dtype, rows, cols, values, meta);
  require(w.dtype != DType::f32, op, "the CUDA 2:4 kernels take fp16 or bf16");
  if (m == 0 || rows == 0) return;
  require(x && y, op, "null pointer");
  require(aligned16(x), op, "x must be 16-byte aligned");
  cuda::sparse24_linear(m, reinterpret_cast<const void*>(x), ldx, reinterpret_cast<void*>(y),
                        reinterpret_cast<const void*>(bias), w, reinterpret_cast<void*>(stream),
                        static_cast<cuda::S24Path>(path));
}

void sparse24_to_dense(uintptr_t dense, int dtype, int64_t rows, int64_t cols, uintptr_t values,
                       uintptr_t meta, uintptr_t stream) {
  const char* op = "sparse24_to_dense (CUDA)";
  const cuda::Sparse24CudaWeight w = s24_weight(op, dtype, rows, cols, values, meta);
  require(dense || rows * cols == 0, op, "null pointer");
  cuda::sparse24_to_dense(reinterpret_cast<void*>(dense), w, reinterpret_cast<void*>(stream));
}

py::dict build_info() {
  py::dict d;
  d["archs"] = SPARSEINFER_CUDA_ARCHS;
  d["nvcc"] = SPARSEINFER_NVCC_VERSION;
  d["csr_seg_cols"] = cuda::kCsrSegCols;
  d["csr_vec"] = cuda::kCsrVec;
  d["csr_pad_index"] = int(cuda::kCsrPadIndex);
  d["s24_tile_rows"] = cuda::kS24TileRows;
  d["s24_tile_cols"] = cuda::kS24TileCols;
  d["s24_pair_cols"] = cuda::kS24PairCols;
  d["s24_split_max_m"] = cuda::kS24SplitMaxM;
  int runtime = 0;
  d["runtime"] = cudaRuntimeGetVersion(&runtime) == cudaSuccess ? runtime : -1;
  return d;
}

}  // namespace

PYBIND11_MODULE(_cuda, mod) {
  mod.doc() = "sparseinfer CUDA kernels (device pointers in; validated by sparseinfer.ops)";
  mod.def("csr_linear", &csr_linear, py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"),
          py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("index"),
          py::arg("seg_ptr"), py::arg("stream"));
  mod.def("csr_tokens_per_pass", [](int64_t m, int dtype) {
    return cuda::csr_tokens_per_pass(m, dtype_from_code(dtype, "csr_tokens_per_pass"));
  });
  mod.def("sparse24_linear", &sparse24_linear, py::arg("m"), py::arg("x"), py::arg("ldx"),
          py::arg("y"), py::arg("bias"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
          py::arg("values"), py::arg("meta"), py::arg("stream"), py::arg("path") = 0);
  mod.def("csr_to_dense", &csr_to_dense, py::arg("dense"), py::arg("dtype"), py::arg("rows"),
          py::arg("cols"), py::arg("values"), py::arg("index"), py::arg("seg_ptr"), py::arg("stream"));
  mod.def("sparse24_to_dense", &sparse24_to_dense, py::arg("dense"), py::arg("dtype"), py::arg("rows"),
          py::arg("cols"), py::arg("values"), py::arg("meta"), py::arg("stream"));
  mod.def("build_info", &build_info);
}
