// _core.cuda test hooks for the prefill product (kernels/cuda/gemm.cu): gemm_f16 through the
// table's automatic choice or one backend forced, the backend in use, cuBLAS's availability, and
// the f32 -> f16 conversion. Each hook copies its inputs to the device, launches on the default
// stream, synchronises and copies the result back; no GPU: EoqError.
#if EOQ_CUDA
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "bindings/cuda_util.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm.h"

namespace py = pybind11;

namespace eoq_py {
namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

[[noreturn]] void bad_arg(const std::string& msg) { throw eoq::Error(eoq::ErrorCode::invalid_arg, msg); }

// A C-contiguous array of 2-byte elements: float16 values, or their bits as uint16.
py::array f16_array(const py::object& o, const char* what) {
  py::array a = py::array::ensure(o, py::array::c_style);
  if (!a || a.itemsize() != 2 || (a.dtype().kind() != 'f' && a.dtype().kind() != 'u'))
    bad_arg(std::string(what) + ": a float16 array expected");
  return a;
}

void upload(const DeviceBuf& d, const py::array& a) {
  cuda_check(cudaMemcpy(d.p, a.data(), (size_t)a.nbytes(), cudaMemcpyHostToDevice), "cudaMemcpy");
}

eoq::cuda::GemmBackend parse_backend(const std::string& s) {
  if (s.empty()) return eoq::cuda::GemmBackend::automatic;
  if (s == "cublas") return eoq::cuda::GemmBackend::cublas;
  if (s == "wmma") return eoq::cuda::GemmBackend::wmma;
  bad_arg("gemm_f16: backend '" + s + "' is not one of '', 'cublas', 'wmma'");
}

}  // namespace

void bind_cuda_gemm(py::module_& m) {
  m.def(
      "gemm_f16",
      [](const py::object& a_obj, const py::object& b_obj, const py::object& c0_obj, bool accumulate,
         const std::string& backend, int64_t ldc) {
        const py::array a = f16_array(a_obj, "gemm_f16: a"), b = f16_array(b_obj, "gemm_f16: b");
        if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(1))
          bad_arg("gemm_f16: a [M][K] and b [N][K] expected");
        const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(0);
        if (ldc == 0) ldc = N;
        if (ldc < N) bad_arg("gemm_f16: ldc < N");
        const eoq::cuda::GemmBackend be = parse_backend(backend);
        if (be == eoq::cuda::GemmBackend::cublas) {
          const std::string why = eoq::cuda::cublas_unavailable_reason();
          if (!why.empty()) throw eoq::Error(eoq::ErrorCode::unsupported, "gemm_f16: " + why);
        }
        const DeviceBuf da((size_t)a.nbytes()), db((size_t)b.nbytes());
        upload(da, a);
        upload(db, b);
        const size_t c_bytes = (size_t)(M * ldc) * sizeof(float);
        DeviceBuf dc(c_bytes);
        if (!c0_obj.is_none()) {
          const f32 c0 = f32::ensure(c0_obj);
          if (!c0 || c0.ndim() != 2 || c0.shape(0) != M || c0.shape(1) != ldc) bad_arg("gemm_f16: c0 [M][ldc] expected");
          cuda_check(cudaMemcpy(dc.p, c0.data(), c_bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
        } else {
          if (accumulate) bad_arg("gemm_f16: accumulate needs c0");
          // All-ones bits (a NaN): a product that reads C when it should not, or writes past
          // column N, shows.
          cuda_check(cudaMemset(dc.p, 0xFF, c_bytes), "cudaMemset");
        }
        const bool ok = be == eoq::cuda::GemmBackend::automatic
                            ? eoq::cuda::cuda_kernels().gemm_f16(da.p, db.p, dc.as<float>(), M, N, K, ldc,
                                                                 accumulate, nullptr)
                            : eoq::cuda::gemm_f16_with(be, da.p, db.p, dc.as<float>(), M, N, K, ldc, accumulate,
                                                       nullptr);
        launched(ok, "gemm_f16");
        return dc.to_numpy<float>({(py::ssize_t)M, (py::ssize_t)ldc});
      },
      py::arg("a"), py::arg("b"), py::arg("c0") = py::none(), py::arg("accumulate") = false,
      py::arg("backend") = "", py::arg("ldc") = 0,
      "C[M][ldc] (columns < N) = a [M][K] @ b [N][K]^T (+ c0 when accumulate), float16 in, float32 out. "
      "backend: '' (the table's choice), 'cublas' or 'wmma' (forced; cublas raises when it cannot be "
      "loaded). ldc: 0 = N. Without c0, C starts as NaN bits (columns >= N stay so).");
  m.def(
      "gemm_backend", [] { return std::string(eoq::cuda::cuda_kernels().gemm_backend()); },
      "the backend the next gemm_f16 call uses: 'cublas' or 'wmma'");
  m.def(
      "cublas_unavailable_reason", [] { return std::string(eoq::cuda::cublas_unavailable_reason()); },
      "'' when cuBLAS loads (dlopen), else why not");
  m.def(
      "convert_f32_f16",
      [](const f32& x) {
        const int64_t n = x.size();
        const DeviceBuf dx(x), dy((size_t)n * 2);
        launched(eoq::cuda::cuda_kernels().convert_f32_f16(dx.as<float>(), dy.p, n, nullptr), "convert_f32_f16");
        py::array out(py::dtype("float16"), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        cuda_check(cudaMemcpy(out.mutable_data(), dy.p, (size_t)n * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
        return out;
      },
      py::arg("x"), "float16 copy of x (any shape), rounded on the device");
}

}  // namespace eoq_py
#endif
