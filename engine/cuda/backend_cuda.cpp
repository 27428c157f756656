// The CUDA backend: weights, activations and the cache in device memory, every op a launcher of
// the CUDA kernel table (kernels/cuda/cuda_kernels.h) on one stream, decode steps captured once
// per shape as CUDA graphs and replayed.
//
// Products: up to kMatVecTokens tokens go through the mat-vec kernels (each weight byte read once,
// integer dots against Q8_1 activations); more tokens (prefill) dequantize the weight to f16 in
// row slices and multiply on tensor cores (cuBLAS when it loads, else our WMMA kernel).
#include "engine/cuda/backend_cuda.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "base/error.h"
#include "engine/cuda/kv_cache_cuda.h"
#include "engine/kv_cache.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/quant_dot.h"

namespace eoq {

namespace cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(ErrorCode::internal, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

void launched(bool ok, const char* op) {
  if (!ok) fail(ErrorCode::internal, std::string("CUDA kernel ") + op + " does not take these shapes");
  check(cudaGetLastError(), op);
}

int decode_len_bucket(int len) {
  int b = 256;
  while (b < len && b < (1 << 30)) b <<= 1;
  return b;
}

namespace {

constexpr int kMatVecTokens = 8;            // mat-vec kernels up to this many tokens
constexpr size_t kDequantSliceBytes = 64u << 20;  // f16 weight slice for one prefill GEMM

class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(size_t bytes, const Device& dev, const std::string& what) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      size_t free = 0, total = 0;
      cudaMemGetInfo(&free, &total);
      fail(ErrorCode::invalid_arg, what + ": cannot allocate " + std::to_string(bytes) + " bytes on " + dev.name() +
                                       " (" + std::to_string(free) + " bytes free): " + cudaGetErrorString(e));
    }
    data_ = p;
    size_ = bytes;
    device_ = dev;
  }
  ~DeviceBuffer() override { cudaFree(data_); }
};

// Grows-only device scratch (its pointer changes only when it grows: captured steps are then
// forgotten by the caller).
struct Scratch {
  void* p = nullptr;
  size_t n = 0;
  bool reserve(size_t bytes) {
    if (bytes <= n) return false;
    if (p) cudaFree(p);
    p = nullptr;
    check(cudaMalloc(&p, bytes), "scratch allocation");
    n = bytes;
    return true;
  }
  ~Scratch() {
    if (p) cudaFree(p);
  }
};

bool is_float_type(GGMLType t) { return t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16; }
bool is_legacy_quant(GGMLType t) {
  return t == GGMLType::Q4_0 || t == GGMLType::Q4_1 || t == GGMLType::Q5_0 || t == GGMLType::Q5_1 || t == GGMLType::Q8_0;
}

class CudaBackend final : public cuda::CudaBackendApi {
 public:
  explicit CudaBackend(int index) : k_(cuda::cuda_kernels()) {
    device_ = Device{DeviceType::cuda, index};
    const std::string why = cuda_unavailable_reason(index);
    if (!why.empty()) fail(ErrorCode::unsupported, "device '" + device_.name() + "' is not available: " + why);
    check(cudaSetDevice(index), "cudaSetDevice");
    check(cudaGetDeviceProperties(&props_, index), "cudaGetDeviceProperties");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaMalloc(reinterpret_cast<void**>(&d_pos0_), sizeof(int32_t)), "cudaMalloc");
    check(cudaMallocHost(reinterpret_cast<void**>(&h_stage_), sizeof(int32_t) * (kMaxStageTokens + 1)), "cudaMallocHost");
    // Q8_1 activations of the mat-vec path, sized once (captured steps keep its pointer).
    q8_.reserve(act_row_bytes(GGMLType::Q8_1, kMaxQ8Cols) * kMatVecTokens);
    q8s_.reserve((size_t)(kMaxQ8Cols + kMaxQ8Cols / 4) * kMatVecTokens);
    const char* rp = std::getenv("EOQ_CUDA_REPACK");
    repack_ = !(rp && std::strcmp(rp, "0") == 0);
    const char* g = std::getenv("EOQ_CUDA_GRAPHS");
    graphs_ = !(g && std::strcmp(g, "0") == 0);
  }
  ~CudaBackend() override {
    forget_steps();
    cudaFree(d_pos0_);
    if (d_tokens_) cudaFree(d_tokens_);
    cudaFreeHost(h_stage_);
    cudaStreamDestroy(stream_);
  }

  Device device() const override { return device_; }
  std::string describe() const override {
    return device_.name() + " (" + props_.name + ", " + std::to_string(props_.multiProcessorCount) + " SMs, " +
           std::to_string(props_.totalGlobalMem >> 30) + " GiB; prefill GEMM: " + k_.gemm_backend() +
           (graphs_ ? "; CUDA graphs" : "") + ")";
  }
  cudaStream_t stream() const override { return stream_; }

  size_t free_memory() const override {
    size_t free = 0, total = 0;
    check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    return free;
  }
  std::unique_ptr<Buffer> alloc(size_t bytes, const std::string& what) override {
    return std::make_unique<DeviceBuffer>(bytes, device_, what);
  }
  Tensor load_weight(GGMLType type, int64_t n_cols, int64_t n_rows, size_t row_bytes, const void* host) override {
    const size_t bytes = row_bytes * (size_t)n_rows;
    // 256-byte aligned slots in one of a few large buffers (cudaMalloc per tensor is slow).
    const size_t need = (bytes + 255) / 256 * 256;
    if (weights_.empty() || weights_used_ + need > weights_.back()->size()) {
      weights_.push_back(alloc(std::max<size_t>(need, 256u << 20), "weights"));
      weights_used_ = 0;
    }
    uint8_t* dst = static_cast<uint8_t*>(weights_.back()->data()) + weights_used_;
    weights_used_ += need;
    // Q4_0 / Q8_0 / Q6_K matrices are repacked into quant and scale planes (matvec_soa.cu) for
    // the decode products' aligned loads; EOQ_CUDA_REPACK=0 keeps the GGUF rows.
    const bool soa = repack_ && n_rows > 1 &&
                     (((type == GGMLType::Q4_0 || type == GGMLType::Q8_0) && n_cols % 128 == 0) ||
                      (type == GGMLType::Q6_K && n_cols % 256 == 0));
    if (soa) {
      Scratch raw;
      raw.reserve(bytes);
      check(cudaMemcpy(raw.p, host, bytes, cudaMemcpyHostToDevice), "copying weights to the GPU");
      launched(k_.repack_soa(type, raw.p, row_bytes, n_cols, n_rows, dst, stream_), "repack_soa");
      check(cudaStreamSynchronize(stream_), "repacking weights");
    } else {
      check(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice), "copying weights to the GPU");
    }
    soa_used_ |= soa || q4k_direct(type, n_cols, row_bytes, dst);
    Tensor t;
    t.layout = soa ? kLayoutSoa : 0;
    t.type = type;
    t.ne[0] = n_cols;
    t.ne[1] = n_rows;
    t.nb1 = row_bytes;
    t.data = dst;
    t.device = device_;
    return t;
  }

  bool begin_step(const int32_t* tokens, int n, int pos0, bool replayable) override {
    if (n > tokens_cap_) {
      const int cap = std::max(n, 512);
      if (d_tokens_) cudaFree(d_tokens_);
      d_tokens_ = nullptr;
      check(cudaMalloc(reinterpret_cast<void**>(&d_tokens_), sizeof(int32_t) * cap), "cudaMalloc");
      tokens_cap_ = cap;
      forget_steps();
    }
    n_tokens_ = n;
    // Token ids and the position through pinned staging (the previous step's copies are done:
    // every step ends by reading its logits).
    for (int i = 0; i < n; i += kMaxStageTokens) {
      const int m = std::min(kMaxStageTokens, n - i);
      std::memcpy(h_stage_, tokens + i, sizeof(int32_t) * m);
      check(cudaMemcpyAsync(d_tokens_ + i, h_stage_, sizeof(int32_t) * m, cudaMemcpyHostToDevice, stream_), "tokens");
      if (i + m < n) check(cudaStreamSynchronize(stream_), "tokens");
    }
    h_stage_[kMaxStageTokens] = pos0;
    check(cudaMemcpyAsync(d_pos0_, h_stage_ + kMaxStageTokens, sizeof(int32_t), cudaMemcpyHostToDevice, stream_), "pos0");

    capturing_ = false;
    replay_ = nullptr;
    q8s_src_ = nullptr;
    if (!(graphs_ && replayable && n == 1)) return true;
    const Key key{n, cuda::decode_len_bucket(pos0 + n)};
    auto it = graphs_map_.find(key);
    if (it != graphs_map_.end()) {
      replay_ = it->second;
      return false;
    }
    // A shape's first step runs directly (kernels set their attributes on first use, which a
    // capture must not see); its second is captured.
    if (warm_.insert(key).second) return true;
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    capturing_ = true;
    capture_key_ = key;
    return true;
  }

  void end_step() override {
    if (capturing_) {
      capturing_ = false;
      cudaGraph_t graph = nullptr;
      check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      check(e, "cudaGraphInstantiate");
      graphs_map_[capture_key_] = exec;
      replay_ = exec;
    }
    if (replay_) check(cudaGraphLaunch(replay_, stream_), "cudaGraphLaunch");
    replay_ = nullptr;
  }
  Tensor step_tokens() const override {
    Tensor t;
    t.type = GGMLType::I32;
    t.ne[0] = n_tokens_;
    t.ne[1] = 1;
    t.nb1 = sizeof(int32_t) * (size_t)n_tokens_;
    t.data = d_tokens_;
    t.device = device_;
    return t;
  }
  const int32_t* step_pos0_device() const override { return d_pos0_; }
  void forget_steps() override {
    for (auto& kv : graphs_map_) cudaGraphExecDestroy(kv.second);
    graphs_map_.clear();
    warm_.clear();
  }

  void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) override {
    wrote(out);
    if (table.layout == kLayoutSoa) {
      launched(k_.get_rows_soa(table.type, table.data, table.ne[0], table.ne[1], static_cast<const int32_t*>(ids.data),
                               (int)ids.ne[0], out.f32(), stream_),
               "get_rows_soa");
      return;
    }
    launched(k_.get_rows(table.type, table.data, table.nb1, table.ne[0], table.ne[1], static_cast<const int32_t*>(ids.data),
                         (int)ids.ne[0], out.f32(), stream_),
             "get_rows");
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    wrote(out);
    // Decode rows that repacked products will read are quantized in the same pass.
    if (soa_used_ && x.ne[1] <= kMatVecTokens && x.ne[0] % 128 == 0 && x.ne[0] <= kMaxQ8Cols) {
      launched(k_.rms_norm_q8s(x.f32(), w.f32(), out.f32(), x.ne[0], x.ne[1], eps, q8s_.p, stream_), "rms_norm_q8s");
      q8s_src_ = out.data;
      q8s_rows_ = x.ne[1];
      return;
    }
    launched(k_.rms_norm(x.f32(), w.f32(), out.f32(), x.ne[0], x.ne[1], eps, stream_), "rms_norm");
  }

  void matmul_swiglu(const Tensor& wg, const Tensor& wu, const Tensor& x, Tensor& gate, Tensor& up) override {
    if (x.ne[1] <= kMatVecTokens && q8s_path(wg) && q8s_path(wu) && wg.type == wu.type && wg.layout == wu.layout) {
      wrote(gate);
      ensure_q8s(x);
      const cuda::SoaJob js[2] = {{wg.data, wg.ne[1], gate.f32(), wg.ne[1]}, {wu.data, wu.ne[1], up.f32(), wu.ne[1]}};
      launched(k_.mul_mat_vec_soa(wg.type, js, 2, x.ne[0], q8s_.p, (int)x.ne[1], false, true, stream_),
               "mul_mat_vec_soa");
      return;
    }
    Backend::matmul_swiglu(wg, wu, x, gate, up);
  }
  void matmul(const Projection* ps, int n, const Tensor& x) override {
    const int64_t n_tok = x.ne[1], K = x.ne[0];
    for (int i = 0; i < n; i++) wrote(*ps[i].y);
    if (n_tok <= kMatVecTokens) {
      // Repacked matrices: consecutive ones of one type and add mode in one launch (Q, K, V).
      std::vector<int> other;
      for (int i = 0; i < n;) {
        const Projection& p0 = ps[i];
        if (!q8s_path(*p0.w)) {
          other.push_back(i++);
          continue;
        }
        ensure_q8s(x);
        cuda::SoaJob js[3];
        int m = 0;
        while (i < n && m < 3 && q8s_path(*ps[i].w) && ps[i].w->type == p0.w->type &&
               ps[i].add_to_y == p0.add_to_y) {
          js[m++] = cuda::SoaJob{ps[i].w->data, ps[i].w->ne[1], ps[i].y->f32(), ps[i].w->ne[1]};
          i++;
        }
        launched(k_.mul_mat_vec_soa(p0.w->type, js, m, K, q8s_.p, (int)n_tok, p0.add_to_y, false, stream_),
                 "mul_mat_vec_soa");
      }
      if (other.empty()) return;
      bool need_q8 = false;
      for (int i : other) need_q8 |= !is_float_type(ps[i].w->type);
      if (need_q8) {
        if (K > kMaxQ8Cols || K % 32) fail(ErrorCode::unsupported, "CUDA mat-vec: rows of " + std::to_string(K) + " values");
        launched(k_.quantize_q8_1(x.f32(), K, n_tok, q8_.p, stream_), "quantize_q8_1");
      }
      for (int i : other) {
        const Tensor& w = *ps[i].w;
        launched(k_.mul_mat_vec(w.type, w.data, w.nb1, w.ne[0], w.ne[1], x.f32(), q8_.p, (int)n_tok, ps[i].y->f32(),
                                w.ne[1], ps[i].add_to_y, stream_),
                 "mul_mat_vec");
      }
      return;
    }
    // Prefill: activations to f16 once, each weight in f16 row slices through the GEMM.
    // Activations of the legacy formats' products are first rounded to the Q8 grid the CPU's
    // products use (act_q8_grid_f16); the others are plain f16.
    bool plain_done = false, grid_done = false;
    for (int i = 0; i < n; i++) {
      const Tensor& w = *ps[i].w;
      const int64_t N = w.ne[1];
      float* y = ps[i].y->f32();
      const bool grid = is_legacy_quant(w.type);
      Scratch& a16 = grid ? act16q_ : act16_;
      if (!(grid ? grid_done : plain_done)) {
        a16.reserve(sizeof(uint16_t) * (size_t)n_tok * K);
        if (grid) launched(k_.act_q8_grid_f16(x.f32(), n_tok * K, a16.p, stream_), "act_q8_grid_f16");
        else launched(k_.convert_f32_f16(x.f32(), a16.p, n_tok * K, stream_), "convert_f32_f16");
        (grid ? grid_done : plain_done) = true;
      }
      if (w.type == GGMLType::F16) {
        launched(k_.gemm_f16(a16.p, w.data, y, n_tok, N, K, N, ps[i].add_to_y, stream_), "gemm_f16");
        continue;
      }
      const int64_t slice = std::max<int64_t>(128, (int64_t)(kDequantSliceBytes / (sizeof(uint16_t) * K)) / 128 * 128);
      w16_.reserve(sizeof(uint16_t) * (size_t)std::min(slice, N) * K);
      for (int64_t r0 = 0; r0 < N; r0 += slice) {
        const int64_t m = std::min(slice, N - r0);
        if (w.layout == kLayoutSoa)
          launched(k_.dequantize_soa_f16(w.type, w.data, K, N, r0, m, w16_.p, stream_), "dequantize_soa_f16");
        else
          launched(k_.dequantize_f16(w.type, w.data, w.nb1, K, r0, m, w16_.p, stream_), "dequantize_f16");
        launched(k_.gemm_f16(a16.p, w16_.p, y + r0, n_tok, m, K, N, ps[i].add_to_y, stream_), "gemm_f16");
      }
    }
  }
  void rope(Tensor& x, int n_head, const RopeParams& p, int) override {
    wrote(x);
    launched(k_.rope(x.f32(), (int)x.ne[1], n_head, p.head_dim, p.n_rot, d_pos0_, p.theta_scale, p.freq_scale,
                     p.freq_factors ? p.freq_factors->f32() : nullptr, stream_),
             "rope");
  }
  void swiglu(Tensor& gate, const Tensor& up) override {
    wrote(gate);
    if (gate.nb1 != (size_t)gate.ne[0] * sizeof(float)) fail(ErrorCode::internal, "swiglu: rows must be contiguous");
    launched(k_.swiglu(gate.f32(), up.f32(), gate.ne[0] * gate.ne[1], stream_), "swiglu");
  }
  void add(Tensor& y, const Tensor& x) override {
    wrote(y);
    launched(k_.add(y.f32(), x.f32(), y.ne[0] * y.ne[1], stream_), "add");
  }
  void to_host(const Tensor& src, void* dst) override {
    check(cudaMemcpyAsync(dst, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_), "copy to host");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void sync() override { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

  std::unique_ptr<KVCache> make_kv_cache(const KVCacheParams& params, const KVCacheShape& shape) override {
    forget_steps();
    if (params.mode == "f16") return make_cuda_f16_kv_cache(shape, *this);
    return make_cuda_codes_kv_cache(params, shape, *this);
  }
  size_t kv_cache_reserve_bytes(const KVCacheParams& params, const KVCacheShape& s) const override {
    return params.mode == "f16" ? cuda_f16_kv_cache_bytes(s) : cuda_codes_kv_cache_bytes(params, s);
  }

 private:
  struct Key {
    int n, bucket;
    bool operator<(const Key& o) const { return n != o.n ? n < o.n : bucket < o.bucket; }
  };
  static constexpr int kMaxStageTokens = 4096;

  static constexpr int64_t kMaxQ8Cols = 1 << 17;  // widest activation row of the mat-vec path
  static constexpr int kLayoutSoa = 1;             // Tensor::layout of repacked Q4_0 / Q8_0 / Q6_K

  // Q4_K matrices in their GGUF layout go through the q8s mat-vec as they are (16-byte aligned
  // 144-byte super-blocks); EOQ_CUDA_REPACK=0 leaves them to the general kernel too.
  bool q4k_direct(GGMLType type, int64_t n_cols, size_t row_bytes, const void* data) const {
    return repack_ && type == GGMLType::Q4_K && n_cols % 256 == 0 && row_bytes % 16 == 0 && ((uintptr_t)data & 15) == 0;
  }
  // The weights the q8s mat-vec (matvec_soa.cu) reads: repacked Q4_0 / Q8_0 / Q6_K, and Q4_K.
  bool q8s_path(const Tensor& w) const {
    return w.layout == kLayoutSoa || q4k_direct(w.type, w.ne[0], w.nb1, w.data);
  }

  // q8s_ holds the q8s rows of the activation tensor at q8s_src_ (set by the fused RMSNorm or a
  // quantization; cleared by any op that writes that tensor and at each step's start).
  void wrote(const Tensor& t) {
    if (t.data == q8s_src_) q8s_src_ = nullptr;
  }
  void ensure_q8s(const Tensor& x) {
    if (x.data == q8s_src_ && x.ne[1] == q8s_rows_) return;
    if (x.ne[0] > kMaxQ8Cols) fail(ErrorCode::unsupported, "CUDA mat-vec: rows of " + std::to_string(x.ne[0]) + " values");
    launched(k_.quantize_q8s(x.f32(), x.ne[0], x.ne[1], q8s_.p, stream_), "quantize_q8s");
    q8s_src_ = x.data;
    q8s_rows_ = x.ne[1];
  }

  const cuda::CudaKernels& k_;
  Device device_;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  int32_t* d_pos0_ = nullptr;
  int32_t* d_tokens_ = nullptr;
  int tokens_cap_ = 0, n_tokens_ = 0;
  int32_t* h_stage_ = nullptr;  // pinned: [kMaxStageTokens] ids, then pos0
  bool graphs_ = true, capturing_ = false;
  Key capture_key_{0, 0};
  cudaGraphExec_t replay_ = nullptr;
  std::map<Key, cudaGraphExec_t> graphs_map_;
  std::set<Key> warm_;  // shapes that ran once without capture
  std::vector<std::unique_ptr<Buffer>> weights_;
  size_t weights_used_ = 0;
  Scratch q8_, q8s_, act16_, act16q_, w16_;
  bool repack_ = true, soa_used_ = false;
  const void* q8s_src_ = nullptr;
  int64_t q8s_rows_ = 0;
};

}  // namespace

}  // namespace cuda

std::string cuda_unavailable_reason(int index) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (e == cudaErrorNoDevice) return "no CUDA GPU was found";
    if (e == cudaErrorInsufficientDriver)
      return "the NVIDIA driver is missing or older than this build's CUDA runtime (" + std::to_string(CUDART_VERSION / 1000) +
             "." + std::to_string(CUDART_VERSION % 1000 / 10) + ")";
    return std::string("the CUDA driver could not be initialised: ") + cudaGetErrorString(e);
  }
  if (n == 0) return "no CUDA GPU was found";
  if (index < 0 || index >= n)
    return "cuda:" + std::to_string(index) + " does not exist (" + std::to_string(n) + " GPU" + (n > 1 ? "s" : "") + ")";
  return "";
}

std::unique_ptr<Backend> make_cuda_backend(int index) { return std::make_unique<cuda::CudaBackend>(index); }

}  // namespace eoq
