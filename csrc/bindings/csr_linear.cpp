// _C CSR functions: csr_linear, csr_linear_path, csr_pack_bitmask.
#include <pybind11/pybind11.h>

#include <string>

#include "bind.h"
#include "common.h"
#include "sparseinfer/csr_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

constexpr const char* kOp = "csr_linear";

PackedCsr packed_csr(int64_t rows, int64_t cols, int dtype, uintptr_t values, uintptr_t local_idx,
                     uintptr_t counts, uintptr_t block_offsets, uintptr_t block_nnz_prefix,
                     uintptr_t bitmask) {
  require(rows >= 0 && cols >= 0, kOp, "negative weight shape");
  PackedCsr w;
  w.rows = rows;
  w.cols = cols;
  w.panels = (cols + kPanelCols - 1) / kPanelCols;
  w.row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  w.dtype = dtype_from_code(dtype, kOp);
  require(values && local_idx && block_nnz_prefix, kOp, "null weight pointer");
  require(w.panels == 0 || w.rows == 0 || (counts && block_offsets), kOp, "null weight pointer");
  w.values = ptr<const void>(values);
  w.local_idx = ptr<const uint8_t>(local_idx);
  w.counts = ptr<const uint8_t>(counts);
  w.block_offsets = ptr<const int64_t>(block_offsets);
  w.block_nnz_prefix = ptr<const int64_t>(block_nnz_prefix);
  w.bitmask = ptr<const uint16_t>(bitmask);
  return w;
}

void linear(int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
            int64_t cols, uintptr_t values, uintptr_t local_idx, uintptr_t counts,
            uintptr_t block_offsets, uintptr_t block_nnz_prefix, uintptr_t bitmask, int num_threads) {
  require(m_tokens >= 0, kOp, "negative number of tokens");
  require(num_threads >= 1, kOp, "num_threads must be >= 1");
  CsrLinearCall call;
  call.w = packed_csr(rows, cols, dtype, values, local_idx, counts, block_offsets, block_nnz_prefix,
                      bitmask);
  call.m = m_tokens;
  require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), kOp, "null activation/output pointer");
  call.x = ptr<const void>(x);
  call.out.y = ptr<void>(y);
  call.out.bias = ptr<const void>(bias);
  call.out.dtype = call.w.dtype;
  py::gil_scoped_release release;
  csr_linear(call, num_threads);
}

std::string path(int64_t m_tokens, bool has_bitmask) { return csr_linear_path(m_tokens, has_bitmask); }

void pack_bitmask(int64_t rows, int64_t cols, int64_t elem_bytes, uintptr_t compressed,
                  uintptr_t bitmask, uintptr_t row_offsets, uintptr_t cell_offsets, uintptr_t values,
                  uintptr_t local_idx, int num_threads) {
  constexpr const char* op = "csr_pack_bitmask";
  require(rows >= 0 && cols >= 0, op, "negative weight shape");
  require(elem_bytes == 2 || elem_bytes == 4, op, "elem_bytes must be 2 or 4");
  require(num_threads >= 1, op, "num_threads must be >= 1");
  require(rows == 0 || cols == 0 || (compressed && bitmask && row_offsets && cell_offsets &&
                                     values && local_idx), op, "null pointer");
  CsrBitmaskPack p;
  p.rows = rows;
  p.cols = cols;
  p.elem_bytes = elem_bytes;
  p.compressed = ptr<const void>(compressed);
  p.bitmask = ptr<const uint8_t>(bitmask);
  p.row_offsets = ptr<const int64_t>(row_offsets);
  p.cell_offsets = ptr<const int64_t>(cell_offsets);
  p.values = ptr<void>(values);
  p.local_idx = ptr<uint8_t>(local_idx);
  if (rows == 0 || cols == 0) return;
  py::gil_scoped_release release;
  csr_pack_bitmask(p, num_threads);
}

}  // namespace

void bind_csr_linear(py::module_& m) {
  m.def("csr_linear", &linear, py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"),
        py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("local_idx"),
        py::arg("counts"), py::arg("block_offsets"), py::arg("block_nnz_prefix"), py::arg("bitmask"),
        py::arg("num_threads"));
  m.def("csr_linear_path", &path, py::arg("m"), py::arg("has_bitmask"));
  m.def("csr_pack_bitmask", &pack_bitmask, py::arg("rows"), py::arg("cols"), py::arg("elem_bytes"),
        py::arg("compressed"), py::arg("bitmask"), py::arg("row_offsets"), py::arg("cell_offsets"),
        py::arg("values"), py::arg("local_idx"), py::arg("num_threads"));
}

}  // namespace sparseinfer::bindings
