// _C lut4 functions: lut4_linear, lut4_linear_path.
#include <pybind11/pybind11.h>

#include <string>

#include "bind.h"
#include "common.h"
#include "sparseinfer/lut4_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

Lut4Act act_from_code(int act, const char* op) {
  require(act == 0 || act == 1, op, "act code must be 0 (none) or 1 (dynamic)");
  return static_cast<Lut4Act>(act);
}

void linear(int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
            int64_t cols, uintptr_t nibbles, uintptr_t scales, uintptr_t zeros, uintptr_t offsets, uintptr_t levels,
            uintptr_t table, int64_t groups, int64_t group_size, int act, int num_threads) {
  constexpr const char* op = "lut4_linear";
  require(m_tokens >= 0, op, "negative number of tokens");
  require(num_threads >= 1, op, "num_threads must be >= 1");
  require(rows >= 0 && cols >= 0 && cols <= kLut4MaxCols, op,
          "weight shape out of range (in_features <= " + std::to_string(kLut4MaxCols) + ")");
  Lut4LinearCall call;
  call.act = act_from_code(act, op);
  PackedLut4& w = call.w;
  w.rows = rows;
  w.cols = cols;
  w.row_blocks = (rows + kLut4RowBlock - 1) / kLut4RowBlock;
  w.kp = (cols + kLut4Chunk - 1) / kLut4Chunk * kLut4Chunk;
  w.groups = groups;
  w.group_size = groups == 1 ? 0 : group_size;
  require((groups == 1 && group_size == 0) ||
              (group_size >= 32 && group_size % 32 == 0 && groups == (cols + group_size - 1) / group_size),
          op, "groups must be 1 (group_size 0) or ceil(cols / group_size) with group_size a multiple of 32");
  require(rows == 0 || ((nibbles || w.kp == 0) && scales && (zeros != 0) != (offsets != 0)), op,
          "null weight pointer (give scales and exactly one of zeros / offsets)");
  require((levels != 0) == (table != 0) && (levels == 0 || offsets != 0), op,
          "levels and table go together, with offsets");
  w.nibbles = ptr<const uint8_t>(nibbles);
  w.scales = ptr<const float>(scales);
  w.zeros = ptr<const uint8_t>(zeros);
  w.offsets = ptr<const float>(offsets);
  w.levels = ptr<const uint8_t>(levels);
  w.table = ptr<const float>(table);
  call.m = m_tokens;
  require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), op, "null activation/output pointer");
  call.x = ptr<const void>(x);
  call.out.y = ptr<void>(y);
  call.out.bias = ptr<const void>(bias);
  call.out.dtype = dtype_from_code(dtype, op);
  py::gil_scoped_release release;
  lut4_linear(call, num_threads);
}

std::string path(int act, int64_t m_tokens) { return lut4_linear_path(act_from_code(act, "lut4_linear_path"), m_tokens); }

}  // namespace

void bind_lut4_linear(py::module_& m) {
  m.def("lut4_linear", &linear, py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"), py::arg("dtype"),
        py::arg("rows"), py::arg("cols"), py::arg("nibbles"), py::arg("scales"), py::arg("zeros"), py::arg("offsets"),
        py::arg("levels"), py::arg("table"), py::arg("groups"), py::arg("group_size"), py::arg("act"),
        py::arg("num_threads"));
  m.def("lut4_linear_path", &path, py::arg("act"), py::arg("m"));
}

}  // namespace sparseinfer::bindings
