// _C sparse int8 functions: sparse_int8_linear, sparse_int8_linear_path.
#include <pybind11/pybind11.h>

#include <string>

#include "bind.h"
#include "common.h"
#include "sparseinfer/sparse_int8_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

SpI8Act act_from_code(int act, const char* op) {
  require(act == 0 || act == 1, op, "act code must be 0 (none) or 1 (dynamic)");
  return static_cast<SpI8Act>(act);
}

// The layout contents (counts, pair_steps) are proved by python/sparseinfer/ops/sparse_int8.py
// before any pointer reaches this function; here only what the sizes show is checked.
void linear(int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows, int64_t cols,
            uintptr_t values, uintptr_t idx, uintptr_t counts, uintptr_t step_wp, uintptr_t pair_steps, int64_t steps,
            bool uniform, uintptr_t scales, int64_t groups, int64_t group_size, int act, int num_threads) {
  constexpr const char* op = "sparse_int8_linear";
  require(m_tokens >= 0, op, "negative number of tokens");
  require(num_threads >= 1, op, "num_threads must be >= 1");
  require(rows >= 0 && cols >= 0 && cols <= kSpI8MaxCols, op,
          "weight shape out of range (in_features <= " + std::to_string(kSpI8MaxCols) + ")");
  require(steps >= 0, op, "negative number of steps");
  SparseInt8LinearCall call;
  call.act = act_from_code(act, op);
  PackedSparseInt8& w = call.w;
  w.rows = rows;
  w.cols = cols;
  w.row_pairs = (rows + 1) / 2;
  w.kp = (cols + kSpI8WindowPair - 1) / kSpI8WindowPair * kSpI8WindowPair;
  w.groups = groups;
  w.group_size = groups == 1 ? 0 : group_size;
  require((groups == 1 && group_size == 0) ||
              (group_size >= 32 && group_size % 32 == 0 && groups == (cols + group_size - 1) / group_size),
          op, "groups must be 1 (group_size 0) or ceil(cols / group_size) with group_size a multiple of 32");
  w.steps = steps;
  w.uniform = uniform;
  require(!uniform || steps == w.row_pairs * (w.kp / kSpI8WindowPair), op,
          "a uniform layout has one step per (row pair, window pair)");
  require(rows == 0 || (pair_steps && scales && (counts || w.kp == 0) && (steps == 0 || (values && idx && step_wp))), op,
          "null weight pointer");
  w.values = ptr<const int8_t>(values);
  w.idx = ptr<const uint8_t>(idx);
  w.counts = ptr<const uint8_t>(counts);
  w.step_wp = ptr<const uint16_t>(step_wp);
  w.pair_steps = ptr<const int64_t>(pair_steps);
  w.scales = ptr<const float>(scales);
  call.m = m_tokens;
  require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), op, "null activation/output pointer");
  call.x = ptr<const void>(x);
  call.out.y = ptr<void>(y);
  call.out.bias = ptr<const void>(bias);
  call.out.dtype = dtype_from_code(dtype, op);
  py::gil_scoped_release release;
  sparse_int8_linear(call, num_threads);
}

std::string path(int act, int64_t m_tokens) {
  return sparse_int8_linear_path(act_from_code(act, "sparse_int8_linear_path"), m_tokens);
}

}  // namespace

void bind_sparse_int8_linear(py::module_& m) {
  m.def("sparse_int8_linear", &linear, py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"), py::arg("dtype"),
        py::arg("rows"), py::arg("cols"), py::arg("values"), py::arg("idx"), py::arg("counts"), py::arg("step_wp"),
        py::arg("pair_steps"), py::arg("steps"), py::arg("uniform"), py::arg("scales"), py::arg("groups"), py::arg("group_size"),
        py::arg("act"), py::arg("num_threads"));
  m.def("sparse_int8_linear_path", &path, py::arg("act"), py::arg("m"));
}

}  // namespace sparseinfer::bindings
