// Helpers every binding file shares (both modules). Python hands over addresses as integers;
// what the binding can see is re-checked here and a bad argument raises ValueError
// ("<op>: <what>", std::invalid_argument in C++) instead of reaching a kernel.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "sparseinfer/dtype.h"

namespace sparseinfer::bindings {

template <class T>
T* ptr(uintptr_t address) { return reinterpret_cast<T*>(address); }

inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

// Codes as in python/sparseinfer/_native.py (DTYPE_CODES).
inline DType dtype_from_code(int code, const char* op) {
  require(code >= 0 && code <= 2, op, "unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

inline bool aligned16(uintptr_t address) { return address % 16 == 0; }

}  // namespace sparseinfer::bindings
