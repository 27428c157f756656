// pybind11 glue only: one bind_* function per engine noun, each in its own file.
#pragma once
#include <pybind11/pybind11.h>

namespace eoq { struct KVCacheParams; }

namespace eoq_py {
// KVCacheParams from a mode and a dict of knobs (k_bits, v_bits, rank_cap, ...); unknown keys
// raise EoqError. Shared by Engine(kv_options=...) and the cache test hooks.
eoq::KVCacheParams kv_params_from_dict(const std::string& mode, const pybind11::dict& opts);

void bind_errors(pybind11::module_& m);     // bindings/module.cpp
void bind_gguf(pybind11::module_& m);       // bindings/bind_gguf.cpp: GGUFFile, dequantize helpers
void bind_tokenizer(pybind11::module_& m);  // bindings/bind_tokenizer.cpp
void bind_engine(pybind11::module_& m);     // bindings/bind_engine.cpp
void bind_kernels(pybind11::module_& m);    // bindings/bind_kernels.cpp: kernel test hooks
void bind_kv(pybind11::module_& m);         // bindings/bind_kv.cpp: compressed-cache test hooks
void bind_cuda(pybind11::module_& m);       // bindings/bind_cuda.cpp: CUDA availability and kernel test hooks
}  // namespace eoq_py
