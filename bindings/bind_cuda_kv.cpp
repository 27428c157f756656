// Test hook for the GPU's KV caches (engine/cuda/), in eoq._core.cuda: CudaKVCacheTester drives a
// cache made by the CUDA backend from NumPy, the twin of bind_kv.cpp's KVCacheTester (the CPU
// cache), so tests can feed both the same K/V and compare codes and attention.
#if EOQ_CUDA
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "bindings/bindings.h"
#include "bindings/cuda_util.h"
#include "engine/backend.h"
#include "engine/cuda/kv_cache_cuda.h"
#include "engine/kv_cache.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

[[noreturn]] void bad(const std::string& msg) { throw eoq::Error(eoq::ErrorCode::invalid_arg, msg); }

// A GPU cache outside any model. append() stages K/V on the device and runs a forward step's
// begin (the position on the device, as a decode graph reads it) and the cache's append;
// attend() runs the queries of the latest append of that layer (what the forward pass asks).
class CudaKVCacheTester {
 public:
  CudaKVCacheTester(const py::dict& params, int n_layer, int n_head_kv, int head_dim, int n_ctx, int n_head) {
    const std::string why = eoq::cuda_unavailable_reason(0);
    if (!why.empty()) throw eoq::Error(eoq::ErrorCode::unsupported, "CUDA is not available: " + why);
    eoq::Device dev;
    dev.type = eoq::DeviceType::cuda;
    backend_ = eoq::make_backend(dev, 1);
    py::dict opts;
    std::string mode = "f16";
    for (auto item : params) {
      if (py::str(item.first).cast<std::string>() == "mode") mode = item.second.cast<std::string>();
      else opts[item.first] = item.second;
    }
    eoq::KVCacheShape s{n_layer, n_head_kv, head_dim, n_ctx, n_head};
    cache_ = backend_->make_kv_cache(kv_params_from_dict(mode, opts), s);
    held_.assign(n_layer, 0);
    last_.assign(n_layer, {0, 0});
  }
  const eoq::KVCacheShape& shape() const { return cache_->shape(); }
  void check_layer(int il) const {
    if (il < 0 || il >= shape().n_layer) bad("layer " + std::to_string(il) + " out of range");
  }
  void append(int il, f32 k, f32 v) {
    check_layer(il);
    const auto& s = shape();
    if (k.ndim() != 3 || k.shape(1) != s.n_head_kv || k.shape(2) != s.head_dim || v.ndim() != 3 ||
        v.shape(0) != k.shape(0) || v.shape(1) != s.n_head_kv || v.shape(2) != s.head_dim)
      bad("append: k and v must be [n, n_head_kv, head_dim]");
    const int n = (int)k.shape(0), pos0 = held_[il];
    if (pos0 + n > s.n_ctx) bad("append: context full");
    DeviceBuf dk(k), dv(v);
    step(n, pos0);
    if (il == 0) cache_->begin(pos0, n);
    const int64_t kv_dim = (int64_t)s.n_head_kv * s.head_dim;
    cache_->append(il, pos0, n, tensor(dk.p, kv_dim, n), tensor(dv.p, kv_dim, n));
    backend_->sync();
    held_[il] += n;
    last_[il] = {pos0, n};
  }
  // q: [n][n_head][head_dim] for the latest append's positions of layer il.
  py::array_t<float> attend(int il, f32 q) {
    check_layer(il);
    const auto& s = shape();
    const int pos0 = last_[il].first, n = last_[il].second;
    if (q.ndim() != 3 || q.shape(0) != n || q.shape(2) != s.head_dim || q.shape(1) % s.n_head_kv != 0)
      bad("attend: q must be [n of the latest append, n_head, head_dim]");
    const int nh = (int)q.shape(1);
    DeviceBuf dq(q), dout((size_t)q.size() * sizeof(float));
    step(n, pos0);
    const int64_t q_dim = (int64_t)nh * s.head_dim;
    eoq::Tensor ot = tensor(dout.p, q_dim, n);
    cache_->attend(il, pos0, n, nh, tensor(dq.p, q_dim, n), ot);
    backend_->sync();
    return dout.to_numpy<float>({(py::ssize_t)n, (py::ssize_t)nh, (py::ssize_t)s.head_dim});
  }
  py::tuple dequantized(int il) {
    check_layer(il);
    std::vector<float> k, v;
    eoq::cuda_kv_dequantized(*cache_, il, k, v);
    const auto& s = shape();
    std::vector<py::ssize_t> sh{(py::ssize_t)held_[il], s.n_head_kv, s.head_dim};
    py::array_t<float> ka(sh), va(sh);
    std::copy(k.begin(), k.end(), ka.mutable_data());
    std::copy(v.begin(), v.end(), va.mutable_data());
    return py::make_tuple(ka, va);
  }
  eoq::KVCache& cache() { return *cache_; }

 private:
  void step(int n, int pos0) {
    std::vector<int32_t> ids(n, 0);
    backend_->begin_step(ids.data(), n, pos0, false);
  }
  eoq::Tensor tensor(void* p, int64_t cols, int64_t rows) const {
    eoq::Tensor t;
    t.type = eoq::GGMLType::F32;
    t.ne[0] = cols;
    t.ne[1] = rows;
    t.nb1 = sizeof(float) * (size_t)cols;
    t.data = p;
    t.device = backend_->device();
    return t;
  }
  std::unique_ptr<eoq::Backend> backend_;  // before the cache, which uses it
  std::unique_ptr<eoq::KVCache> cache_;
  std::vector<int> held_;
  std::vector<std::pair<int, int>> last_;
};

}  // namespace

void bind_cuda_kv(py::module_& m) {
  py::class_<CudaKVCacheTester>(m, "CudaKVCacheTester")
      .def(py::init<const py::dict&, int, int, int, int, int>(), py::arg("params"), py::arg("n_layer"),
           py::arg("n_head_kv"), py::arg("head_dim"), py::arg("n_ctx"), py::arg("n_head"))
      .def("append", &CudaKVCacheTester::append, py::arg("il"), py::arg("k"), py::arg("v"))
      .def("attend", &CudaKVCacheTester::attend, py::arg("il"), py::arg("q"))
      .def("dequantized", &CudaKVCacheTester::dequantized, py::arg("il"))
      .def("stats", [](CudaKVCacheTester& t) { return py::module_::import("json").attr("loads")(t.cache().stats_json()); })
      .def_property_readonly("bytes", [](CudaKVCacheTester& t) { return t.cache().bytes(); })
      .def_property_readonly("bits_per_entry", [](CudaKVCacheTester& t) { return t.cache().bits_per_entry(); })
      .def_property_readonly("n_tokens", [](CudaKVCacheTester& t) { return t.cache().n_tokens(); })
      .def_property_readonly("mode", [](CudaKVCacheTester& t) { return t.cache().mode(); });
}

}  // namespace eoq_py
#endif
