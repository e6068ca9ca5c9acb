// The CPU ISA tiers in one table: their order, their names and the tier each falls back to.
// Every op's dispatch picks its kernels through this table, so which kernels run on a tier where
// an op has none of its own is decided here and nowhere else.
#pragma once
#include <initializer_list>

namespace sparseinfer::cpu {

// Ordered: a tier may only be forced down to a lower one the CPU supports.
// avx512_vnni adds vpdpbusd (int8 dot products); amx adds AMX-INT8 tiles, after the Linux
// permission request (arch_prctl ARCH_REQ_XCOMP_PERM) succeeded.
enum class Isa : int { reference = 0, avx2 = 1, avx512 = 2, avx512_vnni = 3, amx = 4 };
constexpr int kIsaCount = 5;

struct IsaTier {
  Isa isa;
  const char* name;  // as SPARSEINFER_CPU_ISA and set_cpu_isa spell it
  Isa fallback;      // whose kernels run where an op has none for this tier
};

// Indexed by Isa. Fallbacks only go down, and every chain ends at reference, which every op has.
constexpr IsaTier kIsaTiers[kIsaCount] = {
    {Isa::reference, "reference", Isa::reference},
    {Isa::avx2, "avx2", Isa::reference},
    {Isa::avx512, "avx512", Isa::avx2},
    {Isa::avx512_vnni, "avx512_vnni", Isa::avx512},  // ops without int8 math: avx512's kernels
    {Isa::amx, "amx", Isa::avx512_vnni},
};

constexpr int isa_index(Isa isa) { return static_cast<int>(isa); }

constexpr bool tiers_well_formed() {
  if (kIsaTiers[0].fallback != Isa::reference) return false;
  for (int i = 0; i < kIsaCount; ++i) {
    if (isa_index(kIsaTiers[i].isa) != i) return false;
    if (i > 0 && isa_index(kIsaTiers[i].fallback) >= i) return false;
  }
  return true;
}
static_assert(tiers_well_formed(), "kIsaTiers: rows in Isa order, fallbacks strictly lower");

// An op's kernels per tier, indexed by Isa: null where the op has no kernels of that tier.
template <class Kernels>
struct KernelTable {
  const Kernels* by_tier[kIsaCount] = {};
};

template <class Kernels>
struct TierKernels {
  Isa isa;
  const Kernels* kernels;
};

// Builds an op's table from the tiers it has kernels for, e.g.
//   constexpr auto kTable = kernel_table<CsrKernels>({{Isa::reference, &csr_kernels_reference}, ...});
template <class Kernels>
constexpr KernelTable<Kernels> kernel_table(std::initializer_list<TierKernels<Kernels>> tiers) {
  KernelTable<Kernels> table;
  for (const TierKernels<Kernels>& t : tiers) table.by_tier[isa_index(t.isa)] = t.kernels;
  return table;
}

// The kernels of the first tier along the fallback chain from `isa` that has some. Ops
// static_assert has_reference(table), so the walk always ends.
template <class Kernels>
constexpr const Kernels& pick_kernels(const KernelTable<Kernels>& table, Isa isa) {
  while (table.by_tier[isa_index(isa)] == nullptr) isa = kIsaTiers[isa_index(isa)].fallback;
  return *table.by_tier[isa_index(isa)];
}

template <class Kernels>
constexpr bool has_reference(const KernelTable<Kernels>& table) {
  return table.by_tier[isa_index(Isa::reference)] != nullptr;
}

}  // namespace sparseinfer::cpu
