// _core.cuda: whether the CUDA backend can run here, and the CUDA kernels' test hooks (one
// bind_cuda_* function per kernel area, each in its own file). Without EOQ_CUDA the submodule
// holds available() alone.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <vector>

#include "bindings/bindings.h"
#include "engine/backend.h"
#if EOQ_CUDA
#include "bindings/cuda_util.h"
#endif

namespace py = pybind11;

namespace eoq_py {

#if EOQ_CUDA
void bind_cuda_matvec(py::module_& m);       // bindings/bind_cuda_matvec.cpp
void bind_cuda_gemm(py::module_& m);         // bindings/bind_cuda_gemm.cpp
void bind_cuda_elementwise(py::module_& m);  // bindings/bind_cuda_elementwise.cpp
void bind_cuda_attention(py::module_& m);    // bindings/bind_cuda_attention.cpp
void bind_cuda_soa(py::module_& m);          // bindings/bind_cuda_soa.cpp
void bind_cuda_kv(py::module_& m);           // bindings/bind_cuda_kv.cpp
#endif

void bind_cuda(py::module_& m) {
  py::module_ c = m.def_submodule("cuda", "CUDA backend availability and kernel test hooks");
#if EOQ_CUDA
  c.def("built", [] { return true; }, "whether this build has the CUDA backend");
#else
  c.def("built", [] { return false; }, "whether this build has the CUDA backend");
#endif
  // "" when device cuda:index can run, else the one-line reason (no CUDA in this build, no
  // driver, no GPU, index out of range).
  c.def("unavailable_reason", [](int index) { return eoq::cuda_unavailable_reason(index); }, py::arg("index") = 0);
#if EOQ_CUDA
  // The roofline's bandwidth: a device-to-device copy of 1 GiB, bytes read + written per second
  // (the median of 10 timed copies after a warm-up), as ../shared/spec/gpu.md measures it.
  c.def("copy_bandwidth", [](int index) {
    const std::string why = eoq::cuda_unavailable_reason(index);
    if (!why.empty()) throw eoq::Error(eoq::ErrorCode::unsupported, why);
    py::gil_scoped_release nogil;
    cuda_check(cudaSetDevice(index), "cudaSetDevice");
    const size_t n = (size_t)1 << 30;
    DeviceBuf a(n), b(n);
    cudaEvent_t e0, e1;
    cuda_check(cudaEventCreate(&e0), "cudaEventCreate");
    cuda_check(cudaEventCreate(&e1), "cudaEventCreate");
    cuda_check(cudaMemcpy(b.p, a.p, n, cudaMemcpyDeviceToDevice), "cudaMemcpy");
    std::vector<float> ms(10);
    for (float& t : ms) {
      cudaEventRecord(e0);
      cudaMemcpyAsync(b.p, a.p, n, cudaMemcpyDeviceToDevice);
      cudaEventRecord(e1);
      cuda_check(cudaEventSynchronize(e1), "cudaEventSynchronize");
      cudaEventElapsedTime(&t, e0, e1);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::sort(ms.begin(), ms.end());
    return 2.0 * (double)n / (0.5 * (ms[4] + ms[5]) * 1e-3);
  }, py::arg("index") = 0);
  bind_cuda_matvec(c);
  bind_cuda_gemm(c);
  bind_cuda_elementwise(c);
  bind_cuda_attention(c);
  bind_cuda_soa(c);
  bind_cuda_kv(c);
#endif
}

}  // namespace eoq_py
