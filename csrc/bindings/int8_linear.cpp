// _C int8 functions: int8_linear, int8_linear_path, quantize_rows_int8.
#include <pybind11/pybind11.h>

#include <string>

#include "bind.h"
#include "common.h"
#include "sparseinfer/int8_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

Int8Act act_from_code(int act, const char* op) {
  require(act == 0 || act == 1, op, "act code must be 0 (none) or 1 (dynamic)");
  return static_cast<Int8Act>(act);
}

void linear(int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
            int64_t cols, uintptr_t qweight, uintptr_t wsum, uintptr_t scales, int64_t groups,
            int64_t group_size, int act, int num_threads) {
  constexpr const char* op = "int8_linear";
  require(m_tokens >= 0, op, "negative number of tokens");
  require(num_threads >= 1, op, "num_threads must be >= 1");
  require(rows >= 0 && cols >= 0 && cols <= kInt8MaxCols, op,
          "weight shape out of range (in_features <= " + std::to_string(kInt8MaxCols) + ")");
  Int8LinearCall call;
  call.act = act_from_code(act, op);
  PackedInt8& w = call.w;
  w.rows = rows;
  w.cols = cols;
  w.row_blocks = (rows + kInt8RowBlock - 1) / kInt8RowBlock;
  w.kp = (cols + kInt8KBlock - 1) / kInt8KBlock * kInt8KBlock;
  w.groups = groups;
  w.group_size = group_size;
  require(groups == 1 || (group_size >= 32 && group_size % 32 == 0 &&
                          groups == (cols + group_size - 1) / group_size),
          op, "groups must be 1 or ceil(cols / group_size) with group_size a multiple of 32");
  require(rows == 0 || ((qweight || w.kp == 0) && wsum && scales), op, "null weight pointer");
  w.qweight = ptr<const int8_t>(qweight);
  w.wsum = ptr<const int32_t>(wsum);
  w.scales = ptr<const float>(scales);
  call.m = m_tokens;
  require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), op, "null activation/output pointer");
  call.x = ptr<const void>(x);
  call.out.y = ptr<void>(y);
  call.out.bias = ptr<const void>(bias);
  call.out.dtype = dtype_from_code(dtype, op);
  py::gil_scoped_release release;
  int8_linear(call, num_threads);
}

std::string path(int act, int64_t m_tokens, int64_t groups, int64_t group_size) {
  return int8_linear_path(act_from_code(act, "int8_linear_path"), m_tokens, groups, group_size);
}

void quantize_rows(int dtype, uintptr_t x, int64_t m_tokens, int64_t cols, int64_t stride, uintptr_t q,
                   uintptr_t scale) {
  constexpr const char* op = "quantize_rows_int8";
  require(m_tokens >= 0 && cols >= 0 && stride >= cols, op, "bad sizes");
  require(m_tokens == 0 || (q && scale && (x || cols == 0)), op, "null pointer");
  const DType dt = dtype_from_code(dtype, op);
  py::gil_scoped_release release;
  quantize_rows_int8(dt, ptr<const void>(x), m_tokens, cols, stride, ptr<int8_t>(q), ptr<float>(scale));
}

}  // namespace

void bind_int8_linear(py::module_& m) {
  m.def("int8_linear", &linear, py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"),
        py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("qweight"), py::arg("wsum"),
        py::arg("scales"), py::arg("groups"), py::arg("group_size"), py::arg("act"),
        py::arg("num_threads"));
  m.def("int8_linear_path", &path, py::arg("act"), py::arg("m"), py::arg("groups"),
        py::arg("group_size"));
  m.def("quantize_rows_int8", &quantize_rows, py::arg("dtype"), py::arg("x"), py::arg("m"),
        py::arg("cols"), py::arg("stride"), py::arg("q"), py::arg("scale"));
}

}  // namespace sparseinfer::bindings
