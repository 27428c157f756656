// Device names, tensor views and the backend helpers shared by every backend.
#include "engine/backend.h"

#include <algorithm>
#include <cctype>

#include "base/error.h"

namespace eoq {

#if EOQ_CUDA
std::unique_ptr<Backend> make_cuda_backend(int index);  // engine/cuda/backend_cuda.cpp
#else
std::string cuda_unavailable_reason(int) {
  return "this build of eoq has no CUDA backend (it was built without nvcc; rebuild with EOQ_CUDA=ON)";
}
#endif

std::string Device::name() const {
  return type == DeviceType::cpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device parse_device(const std::string& s) {
  std::string d = s;
  std::transform(d.begin(), d.end(), d.begin(), [](unsigned char c) { return (char)std::tolower(c); });
  if (d == "cpu") return Device{DeviceType::cpu, 0};
  if (d == "cuda" || d == "gpu") return Device{DeviceType::cuda, 0};
  if (d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.size() <= 8 &&
      std::all_of(d.begin() + 5, d.end(), [](unsigned char c) { return std::isdigit(c); }))
    return Device{DeviceType::cuda, std::stoi(d.substr(5))};
  fail(ErrorCode::invalid_arg, "device '" + s + "' is not one of cpu, cuda, cuda:N");
}

Tensor Tensor::rows(int64_t r0, int64_t n) const {
  if (r0 < 0 || n < 0 || r0 + n > ne[1])
    fail(ErrorCode::internal, "tensor view of rows " + std::to_string(r0) + ".." + std::to_string(r0 + n) + " out of " +
                                  std::to_string(ne[1]));
  Tensor t = *this;
  t.ne[1] = n;
  t.data = static_cast<uint8_t*>(data) + (size_t)r0 * nb1;
  return t;
}

Tensor host_tensor(float* data, int64_t n_cols, int64_t n_rows) {
  Tensor t;
  t.type = GGMLType::F32;
  t.ne[0] = n_cols;
  t.ne[1] = n_rows;
  t.nb1 = (size_t)n_cols * sizeof(float);
  t.data = data;
  return t;
}

void Backend::check_fits(size_t bytes, const std::string& what) const {
  const size_t free = free_memory();
  if (bytes > free)
    fail(ErrorCode::invalid_arg, what + " needs " + std::to_string(bytes) + " bytes (" +
                                     std::to_string(bytes >> 20) + " MiB) on " + device().name() + ", which has " +
                                     std::to_string(free) + " bytes (" + std::to_string(free >> 20) + " MiB) " +
                                     (device().type == DeviceType::cpu ? "of memory" : "free"));
}

Tensor Backend::alloc_f32(int64_t n_cols, int64_t n_rows, const std::string& what, std::unique_ptr<Buffer>* owner) {
  const size_t nb1 = (size_t)n_cols * sizeof(float);
  *owner = alloc(nb1 * (size_t)n_rows, what);
  Tensor t;
  t.type = GGMLType::F32;
  t.ne[0] = n_cols;
  t.ne[1] = n_rows;
  t.nb1 = nb1;
  t.data = (*owner)->data();
  t.device = device();
  return t;
}

void Backend::matmul_swiglu(const Tensor& w_gate, const Tensor& w_up, const Tensor& x, Tensor& gate, Tensor& up) {
  const Projection gate_up[2] = {{&w_gate, &gate}, {&w_up, &up}};
  matmul(gate_up, 2, x);
  swiglu(gate, up);
}

std::unique_ptr<Backend> make_backend(const Device& device, int n_threads) {
  if (device.type == DeviceType::cpu) return make_cpu_backend(n_threads);
#if EOQ_CUDA
  return make_cuda_backend(device.index);
#else
  fail(ErrorCode::unsupported, "device '" + device.name() + "' is not available: " + cuda_unavailable_reason(device.index));
#endif
}

}  // namespace eoq
