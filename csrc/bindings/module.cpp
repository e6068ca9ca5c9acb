// pybind11 module `sparseinfer._C`. Takes raw pointers and sizes (no libtorch): python/sparseinfer/ops.py
// validates every tensor first; here we re-check what can be seen and throw on anything odd.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "sparseinfer/cpu_features.h"
#include "sparseinfer/csr_linear.h"
#include "sparseinfer/int8_linear.h"
#include "sparseinfer/sparse24_linear.h"
#include "sparseinfer/thread_pool.h"

namespace py = pybind11;
using namespace sparseinfer;

namespace {

template <class T>
T* ptr(uintptr_t address) { return reinterpret_cast<T*>(address); }

void require(bool ok, const std::string& what, const char* op = "csr_linear") {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

DType dtype_from_code(int code, const char* op = "csr_linear") {
  require(code >= 0 && code <= 2, "unknown dtype code " + std::to_string(code), op);
  return static_cast<DType>(code);
}

PackedCsr packed_csr(int64_t rows, int64_t cols, int dtype, uintptr_t values, uintptr_t local_idx,
                     uintptr_t counts, uintptr_t block_offsets, uintptr_t block_nnz_prefix,
                     uintptr_t bitmask) {
  require(rows >= 0 && cols >= 0, "negative weight shape");
  PackedCsr w;
  w.rows = rows;
  w.cols = cols;
  w.panels = (cols + kPanelCols - 1) / kPanelCols;
  w.row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  w.dtype = dtype_from_code(dtype);
  require(values && local_idx && block_nnz_prefix, "null weight pointer");
  require(w.panels == 0 || w.rows == 0 || (counts && block_offsets), "null weight pointer");
  w.values = ptr<const void>(values);
  w.local_idx = ptr<const uint8_t>(local_idx);
  w.counts = ptr<const uint8_t>(counts);
  w.block_offsets = ptr<const int64_t>(block_offsets);
  w.block_nnz_prefix = ptr<const int64_t>(block_nnz_prefix);
  w.bitmask = ptr<const uint16_t>(bitmask);
  return w;
}

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparseinfer native CPU kernels (raw pointers; use sparseinfer.ops)";

  m.def("cpu_features", &cpu_features_dict, "CPU/OS features detected with cpuid/xgetbv");
  m.def("compiled_isas", [] { return isa_list(&cpu::isa_compiled); });
  m.def("supported_isas", [] { return isa_list(&cpu::isa_supported); });
  m.def("best_isa", [] { return std::string(cpu::isa_name(cpu::best_isa())); });
  m.def("active_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); });
  m.def("set_isa", [](const std::string& name) { cpu::set_active_isa(cpu::isa_from_name(name)); },
        py::arg("name"));
  m.def("set_num_threads", &cpu::set_num_threads, py::arg("n"));
  m.def("pool_size", &cpu::pool_size);
  m.def("build_info", [] {
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
    return d;
  });

  m.def(
      "csr_linear",
      [](int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
         int64_t cols, uintptr_t values, uintptr_t local_idx, uintptr_t counts,
         uintptr_t block_offsets, uintptr_t block_nnz_prefix, uintptr_t bitmask, int num_threads) {
        require(m_tokens >= 0, "negative number of tokens");
        require(num_threads >= 1, "num_threads must be >= 1");
        CsrLinearCall call;
        call.w = packed_csr(rows, cols, dtype, values, local_idx, counts, block_offsets,
                            block_nnz_prefix, bitmask);
        call.m = m_tokens;
        require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), "null activation/output pointer");
        call.x = ptr<const void>(x);
        call.out.y = ptr<void>(y);
        call.out.bias = ptr<const void>(bias);
        call.out.dtype = call.w.dtype;
        py::gil_scoped_release release;
        csr_linear(call, num_threads);
      },
      py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"), py::arg("dtype"), py::arg("rows"),
      py::arg("cols"), py::arg("values"), py::arg("local_idx"), py::arg("counts"),
      py::arg("block_offsets"), py::arg("block_nnz_prefix"), py::arg("bitmask"),
      py::arg("num_threads"));

  m.def(
      "csr_linear_path",
      [](int64_t m_tokens, bool has_bitmask) {
        PackedCsr w;
        w.bitmask = has_bitmask ? reinterpret_cast<const uint16_t*>(1) : nullptr;
        return std::string(csr_linear_path(w, m_tokens));
      },
      py::arg("m"), py::arg("has_bitmask"));

  m.def(
      "csr_pack_bitmask",
      [](int64_t rows, int64_t cols, int64_t elem_bytes, uintptr_t compressed, uintptr_t bitmask,
         uintptr_t row_offsets, uintptr_t cell_offsets, uintptr_t values, uintptr_t local_idx,
         int num_threads) {
        constexpr const char* op = "csr_pack_bitmask";
        require(rows >= 0 && cols >= 0, "negative weight shape", op);
        require(elem_bytes == 2 || elem_bytes == 4, "elem_bytes must be 2 or 4", op);
        require(num_threads >= 1, "num_threads must be >= 1", op);
        require(rows == 0 || cols == 0 || (compressed && bitmask && row_offsets && cell_offsets &&
                                           values && local_idx), "null pointer", op);
        CsrBitmaskPack p;
        p.rows = rows;
        p.cols = cols;
        p.elem_bytes = elem_bytes;
        p.compressed = ptr<const void>(compressed);
        p.bitmask = ptr<const uint8_t>(bitmask);
        p.row_offsets = ptr<const int64_t>(row_offsets);
        p.cell_offsets = ptr<const int64_t>(cell_offsets);
        p.values = ptr<void>(values);
        p.local_idx = ptr<uint8_t>(local_idx);
        if (rows == 0 || cols == 0) return;
        py::gil_scoped_release release;
        csr_pack_bitmask(p, num_threads);
      },
      py::arg("rows"), py::arg("cols"), py::arg("elem_bytes"), py::arg("compressed"), py::arg("bitmask"),
      py::arg("row_offsets"), py::arg("cell_offsets"), py::arg("values"), py::arg("local_idx"),
      py::arg("num_threads"));

  m.def(
      "sparse24_linear",
      [](int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
         int64_t cols, uintptr_t values, uintptr_t meta, int num_threads) {
        constexpr const char* op = "sparse24_linear";
        require(m_tokens >= 0, "negative number of tokens", op);
        require(num_threads >= 1, "num_threads must be >= 1", op);
        require(rows >= 0 && cols >= 0, "negative weight shape", op);
        Sparse24LinearCall call;
        call.w.rows = rows;
        call.w.cols = cols;
        call.w.chunks = (cols + kS24ChunkCols - 1) / kS24ChunkCols;
        call.w.dtype = dtype_from_code(dtype, op);
        require(rows == 0 || call.w.chunks == 0 || (values && meta), "null weight pointer", op);
        call.w.values = ptr<const void>(values);
        call.w.meta = ptr<const uint32_t>(meta);
        call.m = m_tokens;
        require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), "null activation/output pointer", op);
        call.x = ptr<const void>(x);
        call.out.y = ptr<void>(y);
        call.out.bias = ptr<const void>(bias);
        call.out.dtype = call.w.dtype;
        py::gil_scoped_release release;
        sparse24_linear(call, num_threads);
      },
      py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"), py::arg("dtype"), py::arg("rows"),
      py::arg("cols"), py::arg("values"), py::arg("meta"), py::arg("num_threads"));
  m.def("sparse24_linear_path", [](int64_t m_tokens) { return std::string(sparse24_linear_path(m_tokens)); },
        py::arg("m"));

  m.def(
      "int8_linear",
      [](int64_t m_tokens, uintptr_t x, uintptr_t y, uintptr_t bias, int dtype, int64_t rows,
         int64_t cols, uintptr_t qweight, uintptr_t wsum, uintptr_t scales, int64_t groups,
         int64_t group_size, int act, int num_threads) {
        constexpr const char* op = "int8_linear";
        require(m_tokens >= 0, "negative number of tokens", op);
        require(num_threads >= 1, "num_threads must be >= 1", op);
        require(rows >= 0 && cols >= 0 && cols <= kInt8MaxCols,
                "weight shape out of range (in_features <= " + std::to_string(kInt8MaxCols) + ")", op);
        require(act == 0 || act == 1, "act code must be 0 (none) or 1 (dynamic)", op);
        Int8LinearCall call;
        PackedInt8& w = call.w;
        w.rows = rows;
        w.cols = cols;
        w.row_blocks = (rows + kInt8RowBlock - 1) / kInt8RowBlock;
        w.kp = (cols + kInt8KBlock - 1) / kInt8KBlock * kInt8KBlock;
        w.groups = groups;
        w.group_size = group_size;
        require(groups == 1 || (group_size >= 32 && group_size % 32 == 0 &&
                                groups == (cols + group_size - 1) / group_size),
                "groups must be 1 or ceil(cols / group_size) with group_size a multiple of 32", op);
        require(rows == 0 || ((qweight || w.kp == 0) && wsum && scales), "null weight pointer", op);
        w.qweight = ptr<const int8_t>(qweight);
        w.wsum = ptr<const int32_t>(wsum);
        w.scales = ptr<const float>(scales);
        call.m = m_tokens;
        require(m_tokens == 0 || rows == 0 || (y && (x || cols == 0)), "null activation/output pointer", op);
        call.x = ptr<const void>(x);
        call.act = static_cast<Int8Act>(act);
        call.out.y = ptr<void>(y);
        call.out.bias = ptr<const void>(bias);
        call.out.dtype = dtype_from_code(dtype, op);
        py::gil_scoped_release release;
        int8_linear(call, num_threads);
      },
      py::arg("m"), py::arg("x"), py::arg("y"), py::arg("bias"), py::arg("dtype"), py::arg("rows"),
      py::arg("cols"), py::arg("qweight"), py::arg("wsum"), py::arg("scales"), py::arg("groups"),
      py::arg("group_size"), py::arg("act"), py::arg("num_threads"));
  m.def(
      "int8_linear_path",
      [](int act, int64_t m_tokens, int64_t groups, int64_t group_size) {
        require(act == 0 || act == 1, "act code must be 0 (none) or 1 (dynamic)", "int8_linear_path");
        return std::string(int8_linear_path(static_cast<Int8Act>(act), m_tokens, groups, group_size));
      },
      py::arg("act"), py::arg("m"), py::arg("groups"), py::arg("group_size"));
  m.def(
      "quantize_rows_int8",
      [](int dtype, uintptr_t x, int64_t m_tokens, int64_t cols, int64_t stride, uintptr_t q, uintptr_t scale) {
        constexpr const char* op = "quantize_rows_int8";
        require(m_tokens >= 0 && cols >= 0 && stride >= cols, "bad sizes", op);
        require(m_tokens == 0 || (q && scale && (x || cols == 0)), "null pointer", op);
        DType dt = dtype_from_code(dtype, op);
        py::gil_scoped_release release;
        quantize_rows_int8(dt, ptr<const void>(x), m_tokens, cols, stride, ptr<int8_t>(q), ptr<float>(scale));
      },
      py::arg("dtype"), py::arg("x"), py::arg("m"), py::arg("cols"), py::arg("stride"), py::arg("q"),
      py::arg("scale"));

  // Fail at import, loudly, if SPARSEINFER_CPU_ISA names an ISA this CPU lacks.
  cpu::active_isa();
}
