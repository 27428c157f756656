// Test hooks for the decode-product kernels (kernels/cuda/matvec.cu, quantize.cu, dequantize.cu)
// on NumPy arrays, in _core.cuda. Each hook copies its inputs to the device, runs the launcher on
// the default stream, synchronises and copies the result back. Types are GGML type numbers (as in
// gguf.GGMLQuantizationType); weight matrices are uint8 [n_rows][row_bytes] of GGUF rows.
#if EOQ_CUDA
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional (y0 = None)

#include <cuda_runtime_api.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/ggml_type.h"
#include "bindings/cuda_util.h"
#include "engine/backend.h"
#include "kernels/cuda/cuda_kernels.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using i32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

void bad(const std::string& what) { throw eoq::Error(eoq::ErrorCode::invalid_arg, what); }

const eoq::cuda::CudaKernels& kernels() {
  const std::string why = eoq::cuda_unavailable_reason(0);
  if (!why.empty()) throw eoq::Error(eoq::ErrorCode::unsupported, "CUDA: " + why);
  return eoq::cuda::cuda_kernels();
}

eoq::GGMLType weight_type(int type) {
  const eoq::TypeInfo ti = eoq::type_info((eoq::GGMLType)type);
  if (!ti.name || !ti.supported) bad("unsupported GGML type " + std::to_string(type));
  return (eoq::GGMLType)type;
}

bool is_float(eoq::GGMLType t) { return t == eoq::GGMLType::F32 || t == eoq::GGMLType::F16 || t == eoq::GGMLType::BF16; }

// w: [n_rows][row_bytes] holding rows of n_cols values of type t.
void check_weights(eoq::GGMLType t, const u8& w, int64_t n_cols) {
  if (w.ndim() != 2) bad("w must be a 2-D uint8 array [n_rows][row_bytes]");
  const size_t need = eoq::row_size(t, n_cols);
  if (n_cols <= 0 || need == 0) bad("n_cols = " + std::to_string(n_cols) + " is not a positive multiple of the block size");
  if ((size_t)w.shape(1) < need) bad("w rows are shorter than row_size(type, n_cols)");
}

size_t q8_1_row_bytes(int64_t n) { return (size_t)(n / 32) * 36; }

// x [n_tok][n] float -> Q8_1 bytes [n_tok][n/32 * 36].
py::array_t<uint8_t> quantize_q8_1(const f32& x) {
  const auto& k = kernels();
  if (x.ndim() != 2 || x.shape(1) % 32 != 0) bad("x must be [n_tok][n] with n a multiple of 32");
  const int64_t n_tok = x.shape(0), n = x.shape(1);
  const size_t rb = q8_1_row_bytes(n);
  DeviceBuf dx(x), dq(rb * (size_t)n_tok);
  launched(k.quantize_q8_1(dx.as<float>(), n, n_tok, dq.p, nullptr), "quantize_q8_1");
  return dq.to_numpy<uint8_t>({(py::ssize_t)n_tok, (py::ssize_t)rb});
}

// y [n_tok][n_rows] = x @ W^T (accumulate: y0 + x @ W^T, y0 zeros when None). Quantized types
// quantize x to Q8_1 on the device first (quantize_q8_1), as the engine does.
py::array_t<float> mul_mat_vec(int type, const u8& w, int64_t n_cols, const f32& x, std::optional<f32> y0,
                               bool accumulate) {
  const auto& k = kernels();
  const eoq::GGMLType t = weight_type(type);
  check_weights(t, w, n_cols);
  if (x.ndim() != 2 || x.shape(1) != n_cols) bad("x must be [n_tok][n_cols]");
  const int64_t n_rows = w.shape(0), n_tok = x.shape(0);
  if (n_tok < 1 || n_tok > 8) bad("n_tok must be 1..8");
  if (y0 && (y0->ndim() != 2 || y0->shape(0) != n_tok || y0->shape(1) != n_rows)) bad("y0 must be [n_tok][n_rows]");
  DeviceBuf dw(w), dx(x);
  std::optional<DeviceBuf> dy;
  if (y0) {
    dy.emplace(*y0);
  } else {
    dy.emplace(sizeof(float) * (size_t)(n_tok * n_rows));
    cuda_check(cudaMemset(dy->p, 0, dy->n), "cudaMemset");
  }
  std::optional<DeviceBuf> dq;
  if (!is_float(t)) {
    if (n_cols % 32) bad("n_cols must be a multiple of 32");
    dq.emplace(q8_1_row_bytes(n_cols) * (size_t)n_tok);
    launched(k.quantize_q8_1(dx.as<float>(), n_cols, n_tok, dq->p, nullptr), "quantize_q8_1");
  }
  launched(k.mul_mat_vec(t, dw.p, (size_t)w.shape(1), n_cols, n_rows, dx.as<float>(), dq ? dq->p : nullptr,
                         (int)n_tok, dy->as<float>(), n_rows, accumulate, nullptr),
           "mul_mat_vec");
  return dy->to_numpy<float>({(py::ssize_t)n_tok, (py::ssize_t)n_rows});
}

// Rows r0 .. r0+n of W as f16 [n][n_cols].
py::array dequantize_f16(int type, const u8& w, int64_t n_cols, int64_t r0, int64_t n) {
  const auto& k = kernels();
  const eoq::GGMLType t = weight_type(type);
  check_weights(t, w, n_cols);
  if (r0 < 0 || n < 0 || r0 + n > w.shape(0)) bad("rows r0 .. r0+n must lie in w");
  DeviceBuf dw(w), dd(sizeof(uint16_t) * (size_t)(n * n_cols));
  launched(k.dequantize_f16(t, dw.p, (size_t)w.shape(1), n_cols, r0, n, dd.p, nullptr), "dequantize_f16");
  py::array out(py::dtype("float16"), std::vector<py::ssize_t>{(py::ssize_t)n, (py::ssize_t)n_cols});
  cuda_check(cudaMemcpy(out.mutable_data(), dd.p, dd.n, cudaMemcpyDeviceToHost), "cudaMemcpy");
  return out;
}

// out [n][n_cols] = float(W[ids[i]]), zero rows for ids outside [0, n_rows).
py::array_t<float> get_rows(int type, const u8& w, int64_t n_cols, const i32& ids) {
  const auto& k = kernels();
  const eoq::GGMLType t = weight_type(type);
  check_weights(t, w, n_cols);
  if (ids.ndim() != 1) bad("ids must be 1-D");
  const int64_t n = ids.shape(0);
  DeviceBuf dw(w), di(ids), dout(sizeof(float) * (size_t)(n * n_cols));
  launched(k.get_rows(t, dw.p, (size_t)w.shape(1), n_cols, w.shape(0), di.as<int32_t>(), (int)n, dout.as<float>(),
                      nullptr),
           "get_rows");
  return dout.to_numpy<float>({(py::ssize_t)n, (py::ssize_t)n_cols});
}

// Seconds per mul_mat_vec call on an [n_rows][n_cols] matrix of `type` (bytes 0x37: finite
// scales; speed does not depend on the values). Several copies of the matrix are cycled so that
// each call reads from HBM, not from the L2 (at least 256 MB in all). The `iters` calls are
// captured in a CUDA graph, as the engine's decode step is, and the graph's replay is timed, so
// host launch overhead does not count; quantize_q8_1 runs once, outside the timing.
double mul_mat_vec_time(int type, int64_t n_rows, int64_t n_cols, int n_tok, int iters) {
  const auto& k = kernels();
  const eoq::GGMLType t = weight_type(type);
  const size_t rb = eoq::row_size(t, n_cols);
  if (n_rows < 1 || rb == 0 || n_tok < 1 || n_tok > 8 || iters < 1) bad("bad shape");
  const size_t bytes = rb * (size_t)n_rows;
  const int copies = (int)std::max<size_t>(1, ((size_t)256 << 20) / bytes + 1);
  DeviceBuf dw(bytes * (size_t)copies), dx(sizeof(float) * (size_t)(n_tok * n_cols)),
      dy(sizeof(float) * (size_t)(n_tok * n_rows)), dq(q8_1_row_bytes(n_cols) * (size_t)n_tok + 16);
  cuda_check(cudaMemset(dw.p, 0x37, dw.n), "cudaMemset");
  cuda_check(cudaMemset(dx.p, 0x37, dx.n), "cudaMemset");
  if (!is_float(t)) launched(k.quantize_q8_1(dx.as<float>(), n_cols, n_tok, dq.p, nullptr), "quantize_q8_1");
  cudaStream_t st = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cudaStreamCreate");
  auto call = [&](int i) {
    const uint8_t* wi = dw.as<uint8_t>() + bytes * (size_t)(i % copies);
    return k.mul_mat_vec(t, wi, rb, n_cols, n_rows, dx.as<float>(), dq.p, n_tok, dy.as<float>(), n_rows, false, st);
  };
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  float ms = 0.0f;
  bool refused = false;
  cudaError_t err = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  if (err == cudaSuccess) {
    for (int i = 0; i < iters; i++) refused |= !call(i);
    err = cudaStreamEndCapture(st, &graph);
  }
  if (err == cudaSuccess && !refused) err = cudaGraphInstantiate(&exec, graph, 0);
  if (err == cudaSuccess && !refused) err = cudaGraphLaunch(exec, st);  // warm-up
  if (err == cudaSuccess && !refused) err = cudaEventCreate(&e0);
  if (err == cudaSuccess && !refused) err = cudaEventCreate(&e1);
  if (err == cudaSuccess && !refused) err = cudaEventRecord(e0, st);
  if (err == cudaSuccess && !refused) err = cudaGraphLaunch(exec, st);
  if (err == cudaSuccess && !refused) err = cudaEventRecord(e1, st);
  if (err == cudaSuccess && !refused) err = cudaEventSynchronize(e1);
  if (err == cudaSuccess && !refused) err = cudaEventElapsedTime(&ms, e0, e1);
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(st);
  if (refused) bad("mul_mat_vec refused these arguments");
  cuda_check(err, "mul_mat_vec_time");
  launched(true, "mul_mat_vec");
  return ms * 1e-3 / iters;
}

}  // namespace

void bind_cuda_matvec(py::module_& m) {
  m.def("quantize_q8_1", &quantize_q8_1, py::arg("x"),
        "x [n_tok][n] float32 -> Q8_1 bytes [n_tok][n/32*36] (kernels/cuda/quantize.cu)");
  m.def("mul_mat_vec", &mul_mat_vec, py::arg("type"), py::arg("w"), py::arg("n_cols"), py::arg("x"),
        py::arg("y0") = py::none(), py::arg("accumulate") = false,
        "y [n_tok][n_rows] = x @ W^T (+ y0 when accumulate) for W uint8 [n_rows][row_bytes] of GGML type `type`");
  m.def("dequantize_f16", &dequantize_f16, py::arg("type"), py::arg("w"), py::arg("n_cols"), py::arg("r0"),
        py::arg("n"), "rows r0..r0+n of W as float16 [n][n_cols]");
  m.def("get_rows", &get_rows, py::arg("type"), py::arg("w"), py::arg("n_cols"), py::arg("ids"),
        "float32 [len(ids)][n_cols] rows of W (zero rows for ids out of range)");
  m.def("mul_mat_vec_time", &mul_mat_vec_time, py::arg("type"), py::arg("n_rows"), py::arg("n_cols"),
        py::arg("n_tok") = 1, py::arg("iters") = 50, "seconds per mul_mat_vec call, weights read from HBM");
}

}  // namespace eoq_py
#endif
