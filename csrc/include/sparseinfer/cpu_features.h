// What the CPU and OS support, detected once; which ISA tier the kernels dispatch to.
// The tiers themselves (order, names, fallbacks) are in isa_table.h.
#pragma once
#include <string>

#include "sparseinfer/isa_table.h"

namespace sparseinfer::cpu {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false, popcnt = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_vnni = false, avx512_bf16 = false, avx512_fp16 = false;
  bool amx_tile = false, amx_int8 = false, amx_bf16 = false;
  bool os_avx = false, os_avx512 = false, os_amx = false;  // XCR0 state enabled by the OS
  bool amx_permitted = false;  // Linux granted this process AMX tile data (asked once)
};

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument
bool isa_compiled(Isa isa);                  // built into this binary
bool isa_supported(Isa isa);                 // compiled and runnable on this CPU
Isa best_isa();
Isa active_isa();
void set_active_isa(Isa isa);  // throws std::runtime_error if the CPU lacks it

}  // namespace sparseinfer::cpu
