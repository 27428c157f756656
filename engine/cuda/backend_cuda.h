// The CUDA backend's pieces that its KV caches share (engine/cuda/ only; the rest of the engine
// sees the Backend interface).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "engine/backend.h"

namespace eoq::cuda {

// Throws Error(internal) naming `what` when e is not cudaSuccess.
void check(cudaError_t e, const char* what);
// Throws Error(internal) when a launcher refused its arguments (kernels/cuda/cuda_kernels.h), then
// checks the launch.
void launched(bool ok, const char* op);

// The context length a decode step's graph is keyed by: positions are rounded up to a power of
// two (at least 256), so a graph serves every length in its bucket and the decode attention's
// split count (chosen from the bucket) is fixed within it.
int decode_len_bucket(int len);

// What the backend's caches need of it: its stream, its device step position and allocations.
class CudaBackendApi : public Backend {
 public:
  virtual cudaStream_t stream() const = 0;
};

}  // namespace eoq::cuda
