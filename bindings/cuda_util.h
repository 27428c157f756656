// Test hooks for the CUDA kernels: device copies of NumPy arrays (RAII) and the check that a
// launcher ran. Only compiled with EOQ_CUDA; every hook raises EoqError when no GPU is usable.
#pragma once
#if EOQ_CUDA
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "base/error.h"

namespace eoq_py {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw eoq::Error(eoq::ErrorCode::internal, std::string(what) + ": " + cudaGetErrorString(e));
}

// Device memory of n bytes, freed on scope exit.
struct DeviceBuf {
  void* p = nullptr;
  size_t n = 0;
  explicit DeviceBuf(size_t bytes) : n(bytes) { cuda_check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc"); }
  template <typename T>
  DeviceBuf(const pybind11::array_t<T, pybind11::array::c_style | pybind11::array::forcecast>& a)
      : DeviceBuf((size_t)a.size() * sizeof(T)) {
    cuda_check(cudaMemcpy(p, a.data(), n, cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  ~DeviceBuf() { cudaFree(p); }
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
  // A NumPy array of `shape` copied from the start of this buffer.
  template <typename T>
  pybind11::array_t<T> to_numpy(const std::vector<pybind11::ssize_t>& shape) const {
    pybind11::array_t<T> a(shape);
    cuda_check(cudaMemcpy(a.mutable_data(), p, (size_t)a.size() * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return a;
  }
};

// After a launcher: false -> invalid_arg (it refused the arguments); then the launch and the
// kernel's own errors (synchronises).
inline void launched(bool ok, const char* op) {
  if (!ok) throw eoq::Error(eoq::ErrorCode::invalid_arg, std::string(op) + ": the launcher refused these arguments");
  cuda_check(cudaGetLastError(), op);
  cuda_check(cudaDeviceSynchronize(), op);
}

}  // namespace eoq_py
#endif
