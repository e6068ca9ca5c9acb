// Where a Linear kernel writes: y[t][row] = acc + bias[row], stored in `dtype`.
#pragma once
#include "sparseinfer/dtype.h"

namespace sparseinfer {

struct LinearOutput {
  void* y = nullptr;           // [m, rows]
  const void* bias = nullptr;  // [rows] or null
  DType dtype = DType::f32;
};

}  // namespace sparseinfer
