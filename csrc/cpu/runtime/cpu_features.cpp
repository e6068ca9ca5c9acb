#include "sparseinfer/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if SPARSEINFER_X86
#include <cpuid.h>
#endif
#if SPARSEINFER_X86 && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sparseinfer::cpu {
namespace {

#if SPARSEINFER_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

// Linux hands out AMX tile state only on request (once per process, inherited by threads).
bool request_amx() {
#if defined(__linux__)
  constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureTileData = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) != 0) return false;
  unsigned long bitmask = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bitmask) != 0) return false;
  return bitmask & (1ul << kXfeatureTileData);
#else
  return false;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  f.popcnt = c & (1u << 23);
  if (osxsave) {
    uint64_t xcr0 = read_xcr0();
    f.os_avx = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
    f.os_avx512 = (xcr0 & 0xe6) == 0xe6;       // + opmask, ZMM_Hi256, Hi16_ZMM
    f.os_amx = (xcr0 & 0x60000) == 0x60000;    // XTILECFG + XTILEDATA
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = b & (1u << 5);
    f.bmi2 = b & (1u << 8);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512_vnni = c & (1u << 11);
    f.avx512_fp16 = d & (1u << 23);
    f.amx_bf16 = d & (1u << 22);
    f.amx_tile = d & (1u << 24);
    f.amx_int8 = d & (1u << 25);
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = a & (1u << 5);
  if (f.os_amx && f.amx_tile && f.amx_int8) f.amx_permitted = request_amx();
  return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

// What a tier needs beyond its fallback tier.
bool cpu_has_own(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::reference: return true;
    case Isa::avx2: return f.os_avx && f.avx2 && f.fma && f.f16c && f.bmi2 && f.popcnt;
    case Isa::avx512: return f.os_avx512 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
    case Isa::avx512_vnni: return f.avx512_vnni;
    case Isa::amx: return f.amx_tile && f.amx_int8 && f.amx_permitted;
  }
  return false;
}

// A tier also needs its whole fallback chain: dispatch runs the fallback's kernels for ops
// that have none of this tier.
bool cpu_has(Isa isa) {
  return cpu_has_own(isa) && (isa == Isa::reference || cpu_has(kIsaTiers[isa_index(isa)].fallback));
}

Isa initial_isa() {
  const char* env = std::getenv("SPARSEINFER_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  Isa wanted = isa_from_name(env);
  if (!isa_supported(wanted))
    throw std::runtime_error(std::string("SPARSEINFER_CPU_ISA=") + env +
                             ": this CPU (or this build) does not support it; best available is " +
                             isa_name(best_isa()));
  return wanted;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

const char* isa_name(Isa isa) {
  const int i = isa_index(isa);
  return i >= 0 && i < kIsaCount ? kIsaTiers[i].name : "unknown";
}

Isa isa_from_name(const std::string& name) {
  for (int i = 0; i < kIsaCount; ++i)
    if (name == isa_name(static_cast<Isa>(i))) return static_cast<Isa>(i);
  std::string known;
  for (const IsaTier& tier : kIsaTiers) known += std::string(known.empty() ? "" : ", ") + tier.name;
  throw std::invalid_argument("unknown CPU ISA '" + name + "': expected one of " + known);
}

bool isa_compiled(Isa isa) { return isa == Isa::reference || SPARSEINFER_X86; }

bool isa_supported(Isa isa) { return isa_compiled(isa) && cpu_has(isa); }

Isa best_isa() {
  for (int i = kIsaCount - 1; i > 0; --i)
    if (isa_supported(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::reference;
}

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("CPU ISA '") + isa_name(isa) +
                             "' is not supported on this CPU; best available is " +
                             isa_name(best_isa()));
  active_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace sparseinfer::cpu
