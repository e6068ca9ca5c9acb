// Per-thread scratch buffers, 64-byte aligned: vector loads from a misaligned buffer (malloc's
// mmap chunks are 16 bytes off a line) split across two cache lines. Defined in a file built
// with baseline flags: ISA files must not instantiate STL containers (the linker may keep their
// copy, with AVX-512 code, for every caller).
#pragma once
#include <cstdint>

namespace sparseinfer {

// Drivers lay out x in kDriverScratch while kernels, run on the same threads, keep partial
// sums in kKernelScratch.
enum ScratchSlot { kDriverScratch = 0, kKernelScratch = 1 };

float* scratch_floats(ScratchSlot slot, int64_t n);

}  // namespace sparseinfer
