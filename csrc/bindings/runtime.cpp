// _C runtime functions: CPU features, ISA tiers, the thread pool and build_info.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bind.h"
#include "sparseinfer/bandwidth.h"
#include "sparseinfer/cpu_features.h"
#include "sparseinfer/csr_linear.h"
#include "sparseinfer/int8_linear.h"
#include "sparseinfer/lut4_linear.h"
#include "sparseinfer/sparse_int8_linear.h"
#include "sparseinfer/sparse24_linear.h"
#include "sparseinfer/thread_pool.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

py::dict cpu_features_dict() {
  const cpu::CpuFeatures& f = cpu::cpu_features();
  py::dict d;
#define SI_FEATURE(name) d[#name] = f.name
  SI_FEATURE(avx2); SI_FEATURE(fma); SI_FEATURE(f16c); SI_FEATURE(bmi2); SI_FEATURE(popcnt);
  SI_FEATURE(avx512f); SI_FEATURE(avx512bw); SI_FEATURE(avx512vl); SI_FEATURE(avx512dq);
  SI_FEATURE(avx512_vnni); SI_FEATURE(avx512_bf16); SI_FEATURE(avx512_fp16);
  SI_FEATURE(amx_tile); SI_FEATURE(amx_int8); SI_FEATURE(amx_bf16);
  SI_FEATURE(os_avx); SI_FEATURE(os_avx512); SI_FEATURE(os_amx); SI_FEATURE(amx_permitted);
#undef SI_FEATURE
  return d;
}

std::vector<std::string> isa_list(bool (*pred)(cpu::Isa)) {
  std::vector<std::string> out;
  for (int i = 0; i < cpu::kIsaCount; ++i)
    if (pred(static_cast<cpu::Isa>(i))) out.emplace_back(cpu::isa_name(static_cast<cpu::Isa>(i)));
  return out;
}

// Layout constants python/sparseinfer reads instead of repeating them.
py::dict build_info() {
  py::dict d;
  d["version"] = SPARSEINFER_VERSION;
  d["compiler"] = SPARSEINFER_COMPILER;
  d["x86"] = bool(SPARSEINFER_X86);
  d["panel_cols"] = kPanelCols;
  d["row_block"] = kRowBlock;
  d["values_pad"] = kValuesPad;
  d["sparse24_chunk_cols"] = kS24ChunkCols;
  d["int8_row_block"] = kInt8RowBlock;
  d["int8_k_block"] = kInt8KBlock;
  d["int8_max_cols"] = kInt8MaxCols;
  d["lut4_row_block"] = kLut4RowBlock;
  d["lut4_chunk_cols"] = kLut4Chunk;
  d["lut4_max_cols"] = kLut4MaxCols;
  d["sparse_int8_window"] = kSpI8Window;
  d["sparse_int8_max_cols"] = kSpI8MaxCols;
  return d;
}

}  // namespace

void bind_runtime(py::module_& m) {
  m.def("cpu_features", &cpu_features_dict, "CPU/OS features detected with cpuid/xgetbv");
  m.def("compiled_isas", [] { return isa_list(&cpu::isa_compiled); });
  m.def("supported_isas", [] { return isa_list(&cpu::isa_supported); });
  m.def("best_isa", [] { return std::string(cpu::isa_name(cpu::best_isa())); });
  m.def("active_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); });
  m.def("set_isa", [](const std::string& name) { cpu::set_active_isa(cpu::isa_from_name(name)); },
        py::arg("name"));
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("n"));
  m.def("pool_size", &cpu::pool_size);
  m.def("threading_backend", &cpu::threading_backend);
  // Python validates the buffer (contiguous CPU tensor, size) before the pointer comes here.
  m.def("read_bandwidth_gbs", [](uintptr_t buffer, int64_t bytes, int threads, int reps) {
    py::gil_scoped_release release;
    return cpu::read_bandwidth_gbs(reinterpret_cast<const void*>(buffer), bytes, threads, reps);
  }, py::arg("buffer"), py::arg("bytes"), py::arg("threads"), py::arg("reps"));
  m.def("set_threading_backend", &cpu::set_threading_backend, py::arg("name"));
  m.def("build_info", &build_info);
}

}  // namespace sparseinfer::bindings
