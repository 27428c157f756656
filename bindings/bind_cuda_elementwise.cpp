// _core.cuda test hooks for the elementwise kernels (kernels/cuda/norm.cu, rope.cu, swiglu.cu,
// add.cu): each copies its inputs to the device, runs the table's launcher on the default stream,
// synchronises and returns the result as a new array; no GPU: EoqError.
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

namespace py = pybind11;

namespace eoq_py {
namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

[[noreturn]] void bad_arg(const std::string& msg) { throw eoq::Error(eoq::ErrorCode::invalid_arg, msg); }

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// A device copy of x placed `offset` floats into its buffer (offset > 0 misaligns the data for
// the launchers' unaligned paths).
struct OffsetBuf {
  DeviceBuf buf;
  int64_t offset;
  OffsetBuf(const f32& x, int64_t off) : buf(((size_t)x.size() + (size_t)off) * sizeof(float)), offset(off) {
    cuda_check(cudaMemcpy(ptr(), x.data(), (size_t)x.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  float* ptr() const { return buf.as<float>() + offset; }
  f32 to_numpy(const std::vector<py::ssize_t>& shape) const {
    f32 a(shape);
    cuda_check(cudaMemcpy(a.mutable_data(), ptr(), (size_t)a.size() * sizeof(float), cudaMemcpyDeviceToHost),
               "cudaMemcpy");
    return a;
  }
};

}  // namespace

void bind_cuda_elementwise(py::module_& m) {
  m.def(
      "rms_norm",
      [](const f32& x, const f32& w, float eps, bool in_place) {
        if (x.ndim() != 2 || w.ndim() != 1 || w.shape(0) != x.shape(1)) bad_arg("rms_norm: x [n_tok][n], w [n] expected");
        const int64_t n_tok = x.shape(0), n = x.shape(1);
        const DeviceBuf dx(x), dw(w), dout(in_place ? 0 : (size_t)x.size() * sizeof(float));
        float* out = in_place ? dx.as<float>() : dout.as<float>();
        launched(eoq::cuda::cuda_kernels().rms_norm(dx.as<float>(), dw.as<float>(), out, n, n_tok, eps, nullptr),
                 "rms_norm");
        return (in_place ? dx : dout).to_numpy<float>(shape_of(x));
      },
      py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("in_place") = false,
      "x / sqrt(mean(x², axis=1) + eps) * w per row; in_place: the launcher's out aliases x");
  m.def(
      "rope",
      [](const f32& x, int n_rot, int pos0, float theta_scale, float freq_scale, const py::object& ff_obj) {
        if (x.ndim() != 3) bad_arg("rope: x [n_tok][n_head][head_dim] expected");
        const int n_tok = (int)x.shape(0), n_head = (int)x.shape(1), head_dim = (int)x.shape(2);
        const DeviceBuf dx(x), dpos(sizeof(int32_t));
        const int32_t p = pos0;
        cuda_check(cudaMemcpy(dpos.p, &p, sizeof p, cudaMemcpyHostToDevice), "cudaMemcpy");
        std::vector<float> ff;
        if (!ff_obj.is_none()) {
          const f32 f = f32::ensure(ff_obj);
          if (!f || f.ndim() != 1 || f.shape(0) != n_rot / 2) bad_arg("rope: freq_factors [n_rot/2] expected");
          ff.assign(f.data(), f.data() + f.size());
        }
        const DeviceBuf dff(ff.size() * sizeof(float));
        if (!ff.empty())
          cuda_check(cudaMemcpy(dff.p, ff.data(), ff.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
        launched(eoq::cuda::cuda_kernels().rope(dx.as<float>(), n_tok, n_head, head_dim, n_rot, dpos.as<int32_t>(),
                                                theta_scale, freq_scale, ff.empty() ? nullptr : dff.as<float>(),
                                                nullptr),
                 "rope");
        return dx.to_numpy<float>(shape_of(x));
      },
      py::arg("x"), py::arg("n_rot"), py::arg("pos0"), py::arg("theta_scale"), py::arg("freq_scale") = 1.0f,
      py::arg("freq_factors") = py::none(),
      "RoPE (GGUF normal, adjacent pairs) of x [n_tok][n_head][head_dim], token t at position pos0 + t "
      "(pos0 passed through device memory, as in decode)");
  m.def(
      "swiglu",
      [](const f32& g, const f32& u, int64_t offset) {
        if (g.size() != u.size() || offset < 0) bad_arg("swiglu: g and u of one size expected");
        const OffsetBuf dg(g, offset), du(u, offset);
        launched(eoq::cuda::cuda_kernels().swiglu(dg.ptr(), du.ptr(), g.size(), nullptr), "swiglu");
        return dg.to_numpy(shape_of(g));
      },
      py::arg("g"), py::arg("u"), py::arg("offset") = 0,
      "silu(g) * u; offset: the device copies start that many floats into their buffers");
  m.def(
      "add",
      [](const f32& y, const f32& x, int64_t offset) {
        if (y.size() != x.size() || offset < 0) bad_arg("add: y and x of one size expected");
        const OffsetBuf dy(y, offset), dx(x, offset);
        launched(eoq::cuda::cuda_kernels().add(dy.ptr(), dx.ptr(), y.size(), nullptr), "add");
        return dy.to_numpy(shape_of(y));
      },
      py::arg("y"), py::arg("x"), py::arg("offset") = 0,
      "y + x through the in-place launcher; offset: the device copies start that many floats in");
}

}  // namespace eoq_py
#endif
