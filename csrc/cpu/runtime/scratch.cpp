#include "sparseinfer/scratch.h"

#include <vector>

namespace sparseinfer {

float* scratch_floats(ScratchSlot slot, int64_t n) {
  thread_local std::vector<float> buffers[2];
  std::vector<float>& buffer = buffers[slot];
  constexpr int64_t kAlign = 64 / sizeof(float);
  if (static_cast<int64_t>(buffer.size()) < n + kAlign) buffer.resize(n + kAlign);
  auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + ((64 - address % 64) % 64) / sizeof(float);
}

}  // namespace sparseinfer
