// _cuda build_info: targets, compiler, layout constants python/sparseinfer reads, CUDA runtime.
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include "../bind.h"
#include "sparseinfer/cuda_linear.h"

namespace py = pybind11;

namespace sparseinfer::bindings {
namespace {

py::dict build_info() {
  py::dict d;
  d["archs"] = SPARSEINFER_CUDA_ARCHS;
  d["nvcc"] = SPARSEINFER_NVCC_VERSION;
  d["csr_seg_cols"] = cuda::kCsrSegCols;
  d["csr_vec"] = cuda::kCsrVec;
  d["csr_pad_index"] = int(cuda::kCsrPadIndex);
  d["s24_tile_rows"] = cuda::kS24TileRows;
  d["s24_tile_cols"] = cuda::kS24TileCols;
  d["s24_pair_cols"] = cuda::kS24PairCols;
  d["s24_split_max_m"] = cuda::kS24SplitMaxM;
  int runtime = 0;
  d["runtime"] = cudaRuntimeGetVersion(&runtime) == cudaSuccess ? runtime : -1;
  return d;
}

}  // namespace

void bind_cuda_info(py::module_& mod) { mod.def("build_info", &build_info); }

}  // namespace sparseinfer::bindings
