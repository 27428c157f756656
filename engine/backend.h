// The backend seam: where the forward pass's tensors live and who computes on them.
//
// models/ writes one forward function against this interface; the CPU backend (engine/
// backend_cpu.cpp) runs it on the kernel table and the thread pool, the CUDA backend (engine/cuda/)
// on the CUDA kernel table and one stream. Shaped after ggml's backend boundary without its graph:
// a buffer that knows its device, tensors that view buffers, and the ops the Llama forward pass
// needs, each a method. Every op is asynchronous on its backend's queue; to_host waits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/ggml_type.h"

namespace eoq {

class KVCache;
struct KVCacheParams;
struct KVCacheShape;

enum class DeviceType { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;  // the GPU's ordinal for cuda
  std::string name() const;  // "cpu", "cuda:0"
};

// "cpu", "cuda", "cuda:N" (case-insensitive); anything else throws Error(invalid_arg).
Device parse_device(const std::string& s);

// "" when cuda:index can run in this process, else the one-line reason: this build has no CUDA
// backend, no driver could be loaded, the driver is too old, no GPU, or the index is out of range.
std::string cuda_unavailable_reason(int index);

// Memory on one device, freed with the buffer.
class Buffer {
 public:
  virtual ~Buffer() = default;
  void* data() const { return data_; }
  size_t size() const { return size_; }
  Device device() const { return device_; }

 protected:
  void* data_ = nullptr;
  size_t size_ = 0;
  Device device_;
};

// A 2-D view: ne[1] rows of ne[0] values of `type`, rows nb1 bytes apart, at `data` on `device`.
// Activations are F32 rows (one per token); weights are GGUF rows of any supported type; I32 holds
// token ids. A Tensor owns nothing: its memory belongs to a Buffer or to the mapped GGUF file.
struct Tensor {
  GGMLType type = GGMLType::F32;
  int64_t ne[2] = {0, 0};  // [n_cols, n_rows]
  size_t nb1 = 0;          // bytes from one row to the next
  void* data = nullptr;
  Device device;
  int layout = 0;  // a backend's own weight layout, repacked at load (0: GGUF rows)

  int64_t n_cols() const { return ne[0]; }
  int64_t n_rows() const { return ne[1]; }
  size_t bytes() const { return nb1 * (size_t)ne[1]; }
  float* f32() const { return static_cast<float*>(data); }
  // Rows [r0, r0 + n) (a forward call on n tokens uses the front of its scratch).
  Tensor rows(int64_t r0, int64_t n) const;
};

// RoPE of the model ("normal" GGUF layout: adjacent pairs; kernels/ops.h rope_adjacent).
struct RopeParams {
  int head_dim = 0;
  int n_rot = 0;
  float theta_scale = 1.0f;  // base^(-2/n_rot)
  float freq_scale = 1.0f;   // linear scaling
  const Tensor* freq_factors = nullptr;  // F32 [n_rot/2] on the backend's device, or null
};

// One product y = W x (add_to_y: y += W x: the residual add fused into the product). w: a weight
// [n_cols, n_rows]; y: F32 [n_rows, n_tok].
struct Projection {
  const Tensor* w;
  Tensor* y;
  bool add_to_y = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string describe() const = 0;  // "cpu (avx512vnni, 2 threads)", "cuda:0 (NVIDIA H200, ...)"
  virtual int n_threads() const { return 1; }

  // ---- memory --------------------------------------------------------------------------
  // Bytes this backend can still allocate (CPU: a large number; CUDA: free device memory).
  virtual size_t free_memory() const = 0;
  // Throws Error(invalid_arg) naming `what`, the bytes needed and free, if `bytes` cannot fit.
  void check_fits(size_t bytes, const std::string& what) const;
  virtual std::unique_ptr<Buffer> alloc(size_t bytes, const std::string& what) = 0;
  // A weight on this device from the mapped file's bytes (CPU: a view of them, no copy; the
  // file must outlive the tensor). n_rows rows of row_bytes bytes.
  virtual Tensor load_weight(GGMLType type, int64_t n_cols, int64_t n_rows, size_t row_bytes, const void* host) = 0;
  // An F32 tensor [n_cols, n_rows] over a new buffer, which *owner receives.
  Tensor alloc_f32(int64_t n_cols, int64_t n_rows, const std::string& what, std::unique_ptr<Buffer>* owner);

  // ---- one forward step ------------------------------------------------------------------
  // Starts a forward call on n tokens at positions pos0..: stages the token ids (step_tokens())
  // and positions on the device. Returns true when the caller must issue the step's ops, false
  // when the backend replays the ops it captured for a step of the same shape (the CUDA graph
  // of a decode step; graphs only when `replayable`: no host reads inside the step).
  virtual bool begin_step(const int32_t* tokens, int n, int pos0, bool replayable) = 0;
  virtual void end_step() = 0;  // runs what was captured, if anything
  virtual Tensor step_tokens() const = 0;  // I32 [1, n] on the device: this step's ids
  // Position pos0 of this step in device memory (kernels that run inside a captured step read
  // it there); nullptr on the CPU.
  virtual const int32_t* step_pos0_device() const { return nullptr; }
  // Drops captured steps: the tensors they read (scratch, cache) were replaced.
  virtual void forget_steps() {}
  // True when rope() and the caches use each call's pos0 argument, so that one step may hold the
  // tokens of several sequences at unrelated positions (rope/append/attend called per sequence
  // on row slices of the step's tensors). False where kernels read the step's one staged
  // position (step_pos0_device: the CUDA backend today): a multi-sequence step then runs as one
  // step per sequence (Model::forward_batch), correct but reading the weights once per sequence.
  virtual bool segmented_steps() const { return false; }

  // ---- the forward pass's ops (n tokens = the rows of the activation tensors) -------------
  // out[t] = dequantized row ids[t] of table
  virtual void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) = 0;
  // out[t] = x[t] / sqrt(mean(x[t]²) + eps) * w (out may be x)
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // Several products of the same x (Q/K/V; gate/up): each y = W x (or y += W x).
  virtual void matmul(const Projection* ps, int n, const Tensor& x) = 0;
  // x: [n_head * head_dim, n_tok], token t at position pos0 + t (also on the device for graphs)
  virtual void rope(Tensor& x, int n_head, const RopeParams& p, int pos0) = 0;
  // gate = silu(gate) * up
  virtual void swiglu(Tensor& gate, const Tensor& up) = 0;
  // The FFN's first half: gate = silu(W_gate x) * (W_up x); up is scratch for W_up x (a backend
  // that fuses the two products and the SwiGLU leaves it untouched). Default: matmul + swiglu.
  virtual void matmul_swiglu(const Tensor& w_gate, const Tensor& w_up, const Tensor& x, Tensor& gate, Tensor& up);
  // y += x
  virtual void add(Tensor& y, const Tensor& x) = 0;
  // Copies src's rows to host memory (waits for the queue); dst holds src.bytes() bytes.
  virtual void to_host(const Tensor& src, void* dst) = 0;
  virtual void sync() = 0;

  // ---- the KV cache --------------------------------------------------------------------
  // A cache of `params.mode` whose storage lives on this device; throws Error(invalid_arg) for a
  // mode this backend cannot hold (the message names the modes it can).
  virtual std::unique_ptr<KVCache> make_kv_cache(const KVCacheParams& params, const KVCacheShape& shape) = 0;
  // Bytes make_kv_cache would allocate up front (0 where storage grows with the tokens).
  virtual size_t kv_cache_reserve_bytes(const KVCacheParams& params, const KVCacheShape& shape) const { return 0; }
};

// The backend for `device`: n_threads for the CPU's pool (0: all hardware threads). Throws
// Error(unsupported) with cuda_unavailable_reason() when CUDA cannot run.
std::unique_ptr<Backend> make_backend(const Device& device, int n_threads);

// The CPU backend alone (tests of the caches and kernels use it without a model).
std::unique_ptr<Backend> make_cpu_backend(int n_threads);

// A host tensor view of F32 rows (for callers that hold host arrays, e.g. the cache test hooks).
Tensor host_tensor(float* data, int64_t n_cols, int64_t n_rows);

}  // namespace eoq
