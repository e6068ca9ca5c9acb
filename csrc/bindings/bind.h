// One bind_* per binding file: it adds that op's functions to a module. module.cpp (_C) and
// cuda_module.cpp (_cuda) only call them.
#pragma once
#include <pybind11/pybind11.h>

namespace sparseinfer::bindings {

// _C (CPU)
void bind_runtime(pybind11::module_& m);  // ISA tiers, threads, build_info
void bind_csr_linear(pybind11::module_& m);
void bind_sparse24_linear(pybind11::module_& m);
void bind_int8_linear(pybind11::module_& m);
void bind_lut4_linear(pybind11::module_& m);
void bind_sparse_int8_linear(pybind11::module_& m);
void bind_decode_ops(pybind11::module_& m);  // generate's rms_norm / rope

// _cuda
void bind_cuda_csr_linear(pybind11::module_& m);
void bind_cuda_sparse24_linear(pybind11::module_& m);
void bind_cuda_info(pybind11::module_& m);  // build_info

}  // namespace sparseinfer::bindings
