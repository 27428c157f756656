// Test hooks of the repacked Q4_0 / Q8_0 decode products (kernels/cuda/matvec_soa.cu).
#if EOQ_CUDA
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bindings/cuda_util.h"
#include "kernels/cuda/cuda_kernels.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

using u8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

// Repacks GGUF rows w [n_rows][row_bytes] of `type` on the device, then y = W x (fused RMSNorm
// quantization when norm_w is given: x is normalized first, as the decode step does), or with
// swiglu the fused silu(W x) * (W2 x) of two matrices w, w2.
py::array_t<float> mul_mat_vec_soa(int type, u8 w, int64_t n_cols, f32 x, py::object w2, py::object norm_w,
                                   float eps) {
  const auto& k = eoq::cuda::cuda_kernels();
  const eoq::GGMLType t = (eoq::GGMLType)type;
  const int64_t n_rows = w.shape(0), n_tok = x.shape(0);
  if (x.ndim() != 2 || x.shape(1) != n_cols) throw eoq::Error(eoq::ErrorCode::invalid_arg, "x must be [n_tok][n_cols]");
  DeviceBuf dw(w), dx(x), ws((size_t)w.size()), y((size_t)(n_rows * n_tok * 4)), xq((size_t)(n_cols + n_cols / 4) * n_tok),
      xn((size_t)x.size() * 4);
  // Q4_K is read in its GGUF layout; the block formats are repacked first
  if (t == eoq::GGMLType::Q4_K) cuda_check(cudaMemcpy(ws.p, dw.p, (size_t)w.size(), cudaMemcpyDeviceToDevice), "copy");
  else launched(k.repack_soa(t, dw.p, (size_t)w.shape(1), n_cols, n_rows, ws.p, nullptr), "repack_soa");
  if (!norm_w.is_none()) {
    f32 nw = norm_w.cast<f32>();
    DeviceBuf dn(nw);
    launched(k.rms_norm_q8s(dx.as<float>(), dn.as<float>(), xn.as<float>(), n_cols, n_tok, eps, xq.p, nullptr),
             "rms_norm_q8s");
  } else {
    launched(k.quantize_q8s(dx.as<float>(), n_cols, n_tok, xq.p, nullptr), "quantize_q8s");
  }
  if (!w2.is_none()) {
    u8 wu = w2.cast<u8>();
    DeviceBuf du(wu), us((size_t)wu.size()), yu((size_t)(n_rows * n_tok * 4));
    if (t == eoq::GGMLType::Q4_K) cuda_check(cudaMemcpy(us.p, du.p, (size_t)wu.size(), cudaMemcpyDeviceToDevice), "copy");
    else launched(k.repack_soa(t, du.p, (size_t)wu.shape(1), n_cols, n_rows, us.p, nullptr), "repack_soa");
    const eoq::cuda::SoaJob js[2] = {{ws.p, n_rows, y.as<float>(), n_rows}, {us.p, n_rows, yu.as<float>(), n_rows}};
    launched(k.mul_mat_vec_soa(t, js, 2, n_cols, xq.p, (int)n_tok, false, true, nullptr), "mul_mat_vec_soa");
  } else {
    const eoq::cuda::SoaJob js[1] = {{ws.p, n_rows, y.as<float>(), n_rows}};
    launched(k.mul_mat_vec_soa(t, js, 1, n_cols, xq.p, (int)n_tok, false, false, nullptr), "mul_mat_vec_soa");
  }
  return y.to_numpy<float>({(py::ssize_t)n_tok, (py::ssize_t)n_rows});
}

// dequantize_soa_f16 of all rows, as float32
py::array_t<float> dequantize_soa(int type, u8 w, int64_t n_cols, int64_t r0, int64_t n) {
  const auto& k = eoq::cuda::cuda_kernels();
  const eoq::GGMLType t = (eoq::GGMLType)type;
  const int64_t n_rows = w.shape(0);
  DeviceBuf dw(w), ws((size_t)w.size()), out((size_t)(n * n_cols * 2));
  launched(k.repack_soa(t, dw.p, (size_t)w.shape(1), n_cols, n_rows, ws.p, nullptr), "repack_soa");
  launched(k.dequantize_soa_f16(t, ws.p, n_cols, n_rows, r0, n, out.p, nullptr), "dequantize_soa_f16");
  py::array_t<uint16_t> h = out.to_numpy<uint16_t>({(py::ssize_t)n, (py::ssize_t)n_cols});
  return py::module_::import("numpy").attr("asarray")(h).attr("view")("float16").attr("astype")("float32");
}

}  // namespace

void bind_cuda_soa(py::module_& m) {
  m.def("mul_mat_vec_soa", &mul_mat_vec_soa, py::arg("type"), py::arg("w"), py::arg("n_cols"), py::arg("x"),
        py::arg("w2") = py::none(), py::arg("norm_w") = py::none(), py::arg("eps") = 1e-5f);
  m.def("dequantize_soa", &dequantize_soa, py::arg("type"), py::arg("w"), py::arg("n_cols"), py::arg("r0"), py::arg("n"));
}

}  // namespace eoq_py
#endif
