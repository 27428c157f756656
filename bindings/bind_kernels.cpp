// Test hooks for the CPU kernel table: run one kernel of a chosen ISA on NumPy arrays, so the
// suite can compare every SIMD kernel with its scalar reference.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "engine/error.h"
#include "kernels/kernels.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u16 = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

const eoq::CpuKernels& table(const std::string& isa) {
  if (isa == "auto") return eoq::cpu_kernels();
  if (isa == "scalar") return eoq::cpu_kernels_scalar();
  if (isa == "avx2") {
    if (const eoq::CpuKernels* k = eoq::cpu_kernels_avx2()) return *k;
    throw eoq::Error(eoq::ErrorCode::unsupported, "this CPU has no AVX2/FMA/F16C");
  }
  throw eoq::Error(eoq::ErrorCode::invalid_arg, "unknown ISA '" + isa + "'");
}

void same_size(py::ssize_t a, py::ssize_t b) {
  if (a != b) throw eoq::Error(eoq::ErrorCode::invalid_arg, "arrays differ in length");
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def("cpu_isa", [] { return std::string(eoq::cpu_kernels().isa); });
  m.def("available_isas", [] {
    std::vector<std::string> v{"scalar"};
    if (eoq::cpu_kernels_avx2()) v.push_back("avx2");
    return v;
  });
  m.def("k_dot_f32", [](const std::string& isa, f32 a, f32 b) {
    same_size(a.size(), b.size());
    return table(isa).dot_f32(a.data(), b.data(), a.size());
  });
  m.def("k_dot_f16_f32", [](const std::string& isa, u16 a, f32 b) {
    same_size(a.size(), b.size());
    return table(isa).dot_f16_f32(a.data(), b.data(), a.size());
  });
  m.def("k_axpy_f32", [](const std::string& isa, float alpha, f32 x, f32 y) {
    same_size(x.size(), y.size());
    py::array_t<float> out(y.size());
    std::copy(y.data(), y.data() + y.size(), out.mutable_data());
    table(isa).axpy_f32(alpha, x.data(), out.mutable_data(), x.size());
    return out;
  });
  m.def("k_axpy_f16", [](const std::string& isa, float alpha, u16 x, f32 y) {
    same_size(x.size(), y.size());
    py::array_t<float> out(y.size());
    std::copy(y.data(), y.data() + y.size(), out.mutable_data());
    table(isa).axpy_f16(alpha, x.data(), out.mutable_data(), x.size());
    return out;
  });
}

}  // namespace eoq_py
