// Test hooks for the f16-cache attention kernels (kernels/cuda/kv_f16.cu, attention_decode.cu,
// attention_prefill.cu), in eoq._core.cuda. Each hook copies NumPy arrays to the device, runs one
// launcher on the default stream, synchronises and copies the result back. Cache arrays are
// [n_head_kv][n_ctx][head_dim]; f16 caches travel as NumPy float16 (or uint16 holding the bits).
#if EOQ_CUDA
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/fp16.h"
#include "bindings/cuda_util.h"
#include "engine/backend.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_kernels.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

[[noreturn]] void bad(const std::string& msg) { throw eoq::Error(eoq::ErrorCode::invalid_arg, msg); }

const eoq::cuda::CudaKernels& kernels() {
  const std::string why = eoq::cuda_unavailable_reason(0);
  if (!why.empty()) throw eoq::Error(eoq::ErrorCode::unsupported, "CUDA is not available: " + why);
  return eoq::cuda::cuda_kernels();
}

// A cache argument on the device as f16: float16 / uint16 arrays are taken as f16 bits, anything
// else as float values rounded to nearest even on the host (base/fp16.h, NumPy's rounding).
struct DeviceCache {
  int n_head_kv = 0, n_ctx = 0, head_dim = 0;
  std::vector<uint16_t> bits;
  explicit DeviceCache(const py::array& a, const char* name) {
    if (a.ndim() != 3) bad(std::string(name) + " must be [n_head_kv][n_ctx][head_dim]");
    n_head_kv = (int)a.shape(0);
    n_ctx = (int)a.shape(1);
    head_dim = (int)a.shape(2);
    bits.resize((size_t)a.size());
    const py::dtype dt = a.dtype();
    if (dt.itemsize() == 2 && (dt.kind() == 'f' || dt.kind() == 'u')) {
      py::array c = py::array::ensure(a, py::array::c_style);
      std::memcpy(bits.data(), c.data(), bits.size() * 2);
    } else {
      f32 c = f32::ensure(a);
      if (!c) bad(std::string(name) + ": not convertible to float32");
      const float* p = c.data();
      for (size_t i = 0; i < bits.size(); i++) bits[i] = eoq::fp32_to_fp16(p[i]);
    }
  }
};

py::array f16_array(const DeviceBuf& b, const std::vector<py::ssize_t>& shape) {
  py::array a(py::dtype("float16"), shape);
  cuda_check(cudaMemcpy(a.mutable_data(), b.p, (size_t)a.nbytes(), cudaMemcpyDeviceToHost), "cudaMemcpy");
  return a;
}

struct Shape {
  int n_tok, n_head, n_head_kv, head_dim, n_ctx;
};

Shape check_shapes(const f32& q, const DeviceCache& k, const DeviceCache& v) {
  if (q.ndim() != 3) bad("q must be [n_tok][n_head][head_dim]");
  if (k.n_head_kv != v.n_head_kv || k.n_ctx != v.n_ctx || k.head_dim != v.head_dim)
    bad("k_cache and v_cache differ in shape");
  Shape s{(int)q.shape(0), (int)q.shape(1), k.n_head_kv, (int)q.shape(2), k.n_ctx};
  if (s.head_dim != k.head_dim) bad("q and the caches differ in head_dim");
  return s;
}

// attention(q, k_cache, v_cache, pos0, n_split): n_split > 0 runs attention_decode_f16 with that
// many splits (pos0 in device memory; the work buffer and the output start as NaN, so a read of an
// unwritten partial or a missed output shows); n_split == 0 runs attention_prefill_f16.
py::array_t<float> attention(const f32& q, const py::array& k_cache, const py::array& v_cache, int pos0, int n_split) {
  const auto& t = kernels();
  const DeviceCache kc(k_cache, "k_cache"), vc(v_cache, "v_cache");
  const Shape s = check_shapes(q, kc, vc);
  if (n_split < 0) bad("n_split must be >= 0 (0: the prefill kernel)");
  DeviceBuf dq(q), dk(kc.bits.size() * 2), dv(vc.bits.size() * 2);
  cuda_check(cudaMemcpy(dk.p, kc.bits.data(), dk.n, cudaMemcpyHostToDevice), "cudaMemcpy");
  cuda_check(cudaMemcpy(dv.p, vc.bits.data(), dv.n, cudaMemcpyHostToDevice), "cudaMemcpy");
  DeviceBuf dout((size_t)s.n_tok * s.n_head * s.head_dim * sizeof(float));
  cuda_check(cudaMemset(dout.p, 0xff, dout.n), "cudaMemset");
  if (n_split > 0) {
    DeviceBuf dpos(sizeof(int32_t));
    const int32_t p = pos0;
    cuda_check(cudaMemcpy(dpos.p, &p, sizeof p, cudaMemcpyHostToDevice), "cudaMemcpy");
    DeviceBuf work(t.attention_decode_work_bytes(s.n_tok, s.n_head, s.head_dim, n_split));
    cuda_check(cudaMemset(work.p, 0xff, work.n), "cudaMemset");
    launched(t.attention_decode_f16(dq.as<float>(), s.n_tok, s.n_head, s.n_head_kv, s.head_dim, s.n_ctx,
                                    dpos.as<int32_t>(), dk.p, dv.p, n_split, work.p, dout.as<float>(), nullptr),
             "attention_decode_f16");
  } else {
    launched(t.attention_prefill_f16(dq.as<float>(), s.n_tok, s.n_head, s.n_head_kv, s.head_dim, s.n_ctx, pos0, dk.p,
                                     dv.p, dout.as<float>(), nullptr),
             "attention_prefill_f16");
  }
  return dout.to_numpy<float>({s.n_tok, s.n_head, s.head_dim});
}

// The decode launcher captured once in a CUDA graph, replayed for each position in pos0s (only the
// device-side pos0 changes between replays): [len(pos0s)][n_tok][n_head][head_dim].
py::array_t<float> attention_decode_graph(const f32& q, const py::array& k_cache, const py::array& v_cache,
                                          const std::vector<int>& pos0s, int n_split) {
  const auto& t = kernels();
  const DeviceCache kc(k_cache, "k_cache"), vc(v_cache, "v_cache");
  const Shape s = check_shapes(q, kc, vc);
  if (n_split <= 0) bad("n_split must be >= 1");
  DeviceBuf dq(q), dk(kc.bits.size() * 2), dv(vc.bits.size() * 2), dpos(sizeof(int32_t));
  cuda_check(cudaMemcpy(dk.p, kc.bits.data(), dk.n, cudaMemcpyHostToDevice), "cudaMemcpy");
  cuda_check(cudaMemcpy(dv.p, vc.bits.data(), dv.n, cudaMemcpyHostToDevice), "cudaMemcpy");
  DeviceBuf work(t.attention_decode_work_bytes(s.n_tok, s.n_head, s.head_dim, n_split));
  const size_t out_n = (size_t)s.n_tok * s.n_head * s.head_dim;
  DeviceBuf dout(out_n * sizeof(float));
  py::array_t<float> res({(py::ssize_t)pos0s.size(), (py::ssize_t)s.n_tok, (py::ssize_t)s.n_head,
                          (py::ssize_t)s.head_dim});
  const int32_t pos0s_first = pos0s.empty() ? 0 : pos0s[0];
  cudaStream_t st = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  auto cleanup = [&] {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    cudaStreamDestroy(st);
  };
  try {
    // one plain call first: the launcher's one-time setup (the shared-memory opt-in) stays out of the capture
    cuda_check(cudaMemcpyAsync(dpos.p, &pos0s_first, sizeof pos0s_first, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync");
    if (!t.attention_decode_f16(dq.as<float>(), s.n_tok, s.n_head, s.n_head_kv, s.head_dim, s.n_ctx, dpos.as<int32_t>(),
                                dk.p, dv.p, n_split, work.p, dout.as<float>(), st))
      bad("attention_decode_f16: the launcher refused these arguments");
    cuda_check(cudaStreamSynchronize(st), "attention_decode_f16");
    cuda_check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    const bool ok = t.attention_decode_f16(dq.as<float>(), s.n_tok, s.n_head, s.n_head_kv, s.head_dim, s.n_ctx,
                                           dpos.as<int32_t>(), dk.p, dv.p, n_split, work.p, dout.as<float>(), st);
    const cudaError_t e = cudaStreamEndCapture(st, &graph);
    if (!ok) bad("attention_decode_f16: the launcher refused these arguments");
    cuda_check(e, "cudaStreamEndCapture");
    cuda_check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    for (size_t i = 0; i < pos0s.size(); i++) {
      const int32_t p = pos0s[i];
      cuda_check(cudaMemcpyAsync(dpos.p, &p, sizeof p, cudaMemcpyHostToDevice, st), "cudaMemcpyAsync");
      cuda_check(cudaMemsetAsync(dout.p, 0xff, dout.n, st), "cudaMemsetAsync");
      cuda_check(cudaGraphLaunch(exec, st), "cudaGraphLaunch");
      cuda_check(cudaMemcpyAsync(res.mutable_data() + i * out_n, dout.p, dout.n, cudaMemcpyDeviceToHost, st),
                 "cudaMemcpyAsync");
      cuda_check(cudaStreamSynchronize(st), "cudaStreamSynchronize");
    }
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
  return res;
}

// kv_store_f16(k, v, n_ctx, pos0): k, v [n_tok][n_head_kv][head_dim] float stored at positions
// pos0.. of fresh caches whose other entries hold the bits 0xffff (a NaN); returns the two caches
// [n_head_kv][n_ctx][head_dim] float16.
py::tuple kv_store_f16(const f32& k, const f32& v, int n_ctx, int pos0) {
  const auto& t = kernels();
  if (k.ndim() != 3 || v.ndim() != 3) bad("k and v must be [n_tok][n_head_kv][head_dim]");
  for (int d = 0; d < 3; d++)
    if (k.shape(d) != v.shape(d)) bad("k and v differ in shape");
  const int n_tok = (int)k.shape(0), n_head_kv = (int)k.shape(1), head_dim = (int)k.shape(2);
  if (n_ctx <= 0 || pos0 < 0 || pos0 + n_tok > n_ctx) bad("positions pos0 .. pos0 + n_tok - 1 must lie in [0, n_ctx)");
  DeviceBuf dk(k), dv(v), dpos(sizeof(int32_t));
  const size_t cache_bytes = (size_t)n_head_kv * n_ctx * head_dim * 2;
  DeviceBuf ck(cache_bytes), cv(cache_bytes);
  cuda_check(cudaMemset(ck.p, 0xff, cache_bytes), "cudaMemset");
  cuda_check(cudaMemset(cv.p, 0xff, cache_bytes), "cudaMemset");
  const int32_t p = pos0;
  cuda_check(cudaMemcpy(dpos.p, &p, sizeof p, cudaMemcpyHostToDevice), "cudaMemcpy");
  launched(t.kv_store_f16(dk.as<float>(), dv.as<float>(), n_tok, n_head_kv, head_dim, n_ctx, dpos.as<int32_t>(), ck.p,
                          cv.p, nullptr),
           "kv_store_f16");
  const std::vector<py::ssize_t> shape{n_head_kv, n_ctx, head_dim};
  return py::make_tuple(f16_array(ck, shape), f16_array(cv, shape));
}

// Timing on device-resident data (caches filled with the f16 bits 0x3c3c, q with zeros): the mean
// time of `iters` calls after 3 warm-up calls, in a dict with the bytes of K/V the step must read
// (decode) or the attention FLOPs (prefill, causal: 4 * head_dim * n_head * Σ_t (pos0 + t + 1)).
py::dict attention_time(int n_tok, int n_head, int n_head_kv, int head_dim, int n_ctx, int pos0, int n_split,
                        int iters) {
  const auto& t = kernels();
  if (n_tok <= 0 || n_head_kv <= 0 || n_head <= 0 || head_dim <= 0 || n_ctx <= 0 || pos0 < 0 || pos0 + n_tok > n_ctx ||
      iters <= 0 || n_split < 0)
    bad("attention_time: bad shape");
  const size_t cache_bytes = (size_t)n_head_kv * n_ctx * head_dim * 2;
  DeviceBuf dk(cache_bytes), dv(cache_bytes), dq((size_t)n_tok * n_head * head_dim * 4), dout(dq.n),
      dpos(sizeof(int32_t));
  cuda_check(cudaMemset(dk.p, 0x3c, cache_bytes), "cudaMemset");
  cuda_check(cudaMemset(dv.p, 0x3c, cache_bytes), "cudaMemset");
  cuda_check(cudaMemset(dq.p, 0, dq.n), "cudaMemset");
  const int32_t p = pos0;
  cuda_check(cudaMemcpy(dpos.p, &p, sizeof p, cudaMemcpyHostToDevice), "cudaMemcpy");
  DeviceBuf work(n_split > 0 ? t.attention_decode_work_bytes(n_tok, n_head, head_dim, n_split) : 0);
  auto run = [&] {
    return n_split > 0 ? t.attention_decode_f16(dq.as<float>(), n_tok, n_head, n_head_kv, head_dim, n_ctx,
                                                dpos.as<int32_t>(), dk.p, dv.p, n_split, work.p, dout.as<float>(),
                                                nullptr)
                       : t.attention_prefill_f16(dq.as<float>(), n_tok, n_head, n_head_kv, head_dim, n_ctx, pos0, dk.p,
                                                 dv.p, dout.as<float>(), nullptr);
  };
  for (int i = 0; i < 3; i++) launched(run(), "attention");
  cudaEvent_t e0, e1;
  cuda_check(cudaEventCreate(&e0), "cudaEventCreate");
  cuda_check(cudaEventCreate(&e1), "cudaEventCreate");
  cudaEventRecord(e0, nullptr);
  bool ok = true;
  for (int i = 0; i < iters; i++) ok = ok && run();
  cudaEventRecord(e1, nullptr);
  const cudaError_t e = cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cuda_check(e, "cudaEventSynchronize");
  launched(ok, "attention");
  ms /= (float)iters;
  py::dict d;
  d["ms"] = ms;
  const double kv_bytes = 2.0 * n_head_kv * head_dim * 2.0 * (double)(pos0 + n_tok);
  double flops = 0;
  for (int i = 0; i < n_tok; i++) flops += 4.0 * head_dim * n_head * (double)(pos0 + i + 1);
  d["kv_bytes"] = kv_bytes;
  d["gb_per_s"] = kv_bytes / (ms * 1e-3) / 1e9;
  d["tflops"] = flops / (ms * 1e-3) / 1e12;
  return d;
}

}  // namespace

void bind_cuda_attention(py::module_& m) {
  m.def("attention", &attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"),
        py::arg("n_split"),
        "f16-cache attention: q float32 [n_tok][n_head][head_dim], caches [n_head_kv][n_ctx][head_dim] (float16, or "
        "float rounded to f16 here); n_split > 0: attention_decode_f16 with n_split splits, 0: attention_prefill_f16. "
        "Returns float32 [n_tok][n_head][head_dim].");
  m.def("attention_decode_graph", &attention_decode_graph, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("pos0s"), py::arg("n_split"),
        "attention_decode_f16 captured once in a CUDA graph and replayed at each pos0 in pos0s: "
        "[len(pos0s)][n_tok][n_head][head_dim]");
  m.def("kv_store_f16", &kv_store_f16, py::arg("k"), py::arg("v"), py::arg("n_ctx"), py::arg("pos0"),
        "kv_store_f16 into fresh caches (other entries: bits 0xffff): (k_cache, v_cache) float16 "
        "[n_head_kv][n_ctx][head_dim]");
  m.def("attention_decode_splits", &eoq::cuda::attention_decode_splits, py::arg("n_head_kv"), py::arg("len_bucket"),
        py::arg("n_sm") = 0, "the n_split the backend passes for a context-length bucket");
  m.def("attention_time", &attention_time, py::arg("n_tok"), py::arg("n_head"), py::arg("n_head_kv"),
        py::arg("head_dim"), py::arg("n_ctx"), py::arg("pos0"), py::arg("n_split"), py::arg("iters") = 20,
        "mean ms per call of the decode (n_split > 0) or prefill (0) launcher on synthetic device data, with "
        "gb_per_s (K/V bytes read) and tflops (causal attention FLOPs)");
}

}  // namespace eoq_py
#endif
