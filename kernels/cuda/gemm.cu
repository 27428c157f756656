// The prefill product C[M][N] (+)= A[M][K] · B[N][K]^T: f16 activations A (tokens), f16 weights B
// (output rows), f32 accumulation and output with row stride ldc. Two backends:
//  * cuBLAS, opened at run time with dlopen (never linked; no cuBLAS header is used: the few
//    prototypes and enum values below are declared from the public cuBLAS documentation);
//  * our own tensor-core kernel (mma.sync m16n8k16, f16 in, f32 accumulate), the fallback for
//    machines without cuBLAS and the reference for it in the tests (env EOQ_GEMM=wmma forces it).
// Also convert_f32_f16, the activations' rounding to f16 before the product.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <library_types.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm.h"

namespace eoq::cuda {
namespace {

// ---- cuBLAS, loaded at run time ------------------------------------------------------------
// Declared here from the cuBLAS documentation (C API; its enums are C enums, passed as int).
struct cublasContext;
using cublasHandle_t = cublasContext*;
using cublasStatus_t = int;
constexpr cublasStatus_t CUBLAS_STATUS_SUCCESS = 0;
constexpr int CUBLAS_OP_N = 0;             // cublasOperation_t
constexpr int CUBLAS_OP_T = 1;
constexpr int CUBLAS_DEFAULT_MATH = 0;     // cublasMath_t: tensor cores allowed for f16 inputs
constexpr int CUBLAS_COMPUTE_32F = 68;     // cublasComputeType_t: f32 accumulation
constexpr int CUBLAS_GEMM_DEFAULT = -1;    // cublasGemmAlgo_t: the library's heuristic
// cudaDataType values come from library_types.h (CUDA_R_16F = 2, CUDA_R_32F = 0).

using CreateFn = cublasStatus_t (*)(cublasHandle_t*);
using DestroyFn = cublasStatus_t (*)(cublasHandle_t);
using SetStreamFn = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
using SetMathModeFn = cublasStatus_t (*)(cublasHandle_t, int);
using SetWorkspaceFn = cublasStatus_t (*)(cublasHandle_t, void*, size_t);
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, int transa, int transb, int m, int n, int k, const void* alpha,
                                    const void* A, cudaDataType Atype, int lda, const void* B, cudaDataType Btype,
                                    int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                                    int computeType, int algo);

struct CublasLib {
  bool ok = false;
  std::string why;  // "" when ok
  CreateFn create = nullptr;
  DestroyFn destroy = nullptr;
  SetStreamFn set_stream = nullptr;
  SetMathModeFn set_math_mode = nullptr;
  SetWorkspaceFn set_workspace = nullptr;
  GemmExFn gemm_ex = nullptr;
};

// Search order: $EOQ_CUBLAS, libcublas.so.13, libcublas.so.12, libcublas.so. Never dlclosed
// (handles live until the process ends).
CublasLib load_cublas() {
  CublasLib L;
  void* lib = nullptr;
  std::string tried;
  const char* env = std::getenv("EOQ_CUBLAS");
  const char* names[] = {env && *env ? env : nullptr, "libcublas.so.13", "libcublas.so.12", "libcublas.so"};
  for (const char* name : names) {
    if (!name) continue;
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    const char* e = dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (e ? e : name);
  }
  if (!lib) {
    L.why = "cuBLAS not found (" + tried + ")";
    return L;
  }
  auto sym = [&](const char* s) {
    void* p = dlsym(lib, s);
    if (!p && L.why.empty()) L.why = std::string("cuBLAS lacks ") + s;
    return p;
  };
  L.create = reinterpret_cast<CreateFn>(sym("cublasCreate_v2"));
  L.destroy = reinterpret_cast<DestroyFn>(sym("cublasDestroy_v2"));
  L.set_stream = reinterpret_cast<SetStreamFn>(sym("cublasSetStream_v2"));
  L.set_math_mode = reinterpret_cast<SetMathModeFn>(sym("cublasSetMathMode"));
  L.set_workspace = reinterpret_cast<SetWorkspaceFn>(sym("cublasSetWorkspace_v2"));
  L.gemm_ex = reinterpret_cast<GemmExFn>(sym("cublasGemmEx"));
  L.ok = L.why.empty();
  return L;
}

const CublasLib& cublas_lib() {
  static const CublasLib lib = load_cublas();  // thread-safe static initialisation
  return lib;
}

// One handle and one fixed workspace per device, created at the device's first cuBLAS call
// (that call allocates; later ones never do). The mutex serialises the handle's stream and
// workspace settings with the call that uses them (cublasSetStream resets the workspace to the
// library's default pool, so the workspace is set again after it on every call). One workspace
// per device: concurrent products on two streams of one device are serialised on the host but
// could still overlap on the GPU and share it, so the engine keeps its products on one stream
// per device.
constexpr int kMaxDevices = 64;
constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // cuBLAS's recommendation for Hopper

struct DeviceCublas {
  std::mutex mu;
  bool tried = false;
  cublasHandle_t handle = nullptr;
  void* workspace = nullptr;
};
DeviceCublas g_device_cublas[kMaxDevices];

// Set after any cuBLAS failure: the automatic choice then stays on our kernel.
std::atomic<bool> g_cublas_failed{false};

bool env_forces_wmma() {
  static const bool v = [] {
    const char* e = std::getenv("EOQ_GEMM");
    return e && std::strcmp(e, "wmma") == 0;
  }();
  return v;
}

// Shapes both backends accept: sizes fit cuBLAS's int, ldc >= N. Caller handles M == 0 / N == 0.
bool shape_ok(const void* a, const void* b, const float* c, int64_t M, int64_t N, int64_t K, int64_t ldc) {
  if (!a || !b || !c || M < 0 || N < 0 || K <= 0 || ldc < N || ldc < 1) return false;
  return M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && ldc <= INT_MAX;
}

bool gemm_cublas(const void* a, const void* b, float* c, int64_t M, int64_t N, int64_t K, int64_t ldc,
                 bool accumulate, cudaStream_t s) {
  const CublasLib& L = cublas_lib();
  if (!L.ok) return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return false;
  DeviceCublas& d = g_device_cublas[dev];
  std::lock_guard<std::mutex> lock(d.mu);
  if (!d.tried) {
    d.tried = true;
    cublasHandle_t h = nullptr;
    if (L.create(&h) != CUBLAS_STATUS_SUCCESS) return false;
    void* ws = nullptr;
    if (L.set_math_mode(h, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc(&ws, kWorkspaceBytes) != cudaSuccess) {
      (void)cudaGetLastError();  // a failed cudaMalloc's error is not the caller's: clear it
      L.destroy(h);
      return false;
    }
    d.handle = h;
    d.workspace = ws;
  }
  if (!d.handle) return false;
  if (L.set_stream(d.handle, s) != CUBLAS_STATUS_SUCCESS) return false;
  if (L.set_workspace(d.handle, d.workspace, kWorkspaceBytes) != CUBLAS_STATUS_SUCCESS) return false;
  // Row-major C[M][N] (ldc) is column-major C^T: N x M with leading dimension ldc. Likewise
  // A[M][K] is column-major K x M (ld K) and B[N][K] column-major K x N (ld K). So
  // C^T = B · A^T = op(Bcm) · Acm with op = transpose: m = N, n = M, k = K.
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const cublasStatus_t st =
      L.gemm_ex(d.handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, b, CUDA_R_16F, (int)K, a,
                CUDA_R_16F, (int)K, &beta, c, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return st == CUBLAS_STATUS_SUCCESS;
}

// ---- our tensor-core kernel ----------------------------------------------------------------
// Block tile BM x 128 of C (BM = 32*MI rows of tokens, 128 columns of output rows), K in steps
// of 32, a kStages-deep cp.async pipeline. 8 warps as 2 (M) x 4 (N); each warp owns a
// (16*MI) x 32 piece: MI m16 tiles x 4 n8 tiles of mma.sync m16n8k16 (A row-major, B "col" =
// B[N][K] row-major, exactly the weights' layout), f32 accumulators in registers.
// Shared rows are padded to 40 halves (80 bytes): 16-byte aligned for cp.async/ldmatrix, and the
// 8 rows one ldmatrix phase reads start in 8 distinct 4-bank groups (80 B = 20 banks apart).
// Tile rows past M or N are zero-filled (cp.async with source size 0) and never stored.
constexpr int kBN = 128;
constexpr int kBK = 32;
constexpr int kStages = 3;
constexpr int kThreads = 256;
constexpr int kLds = kBK + 8;
static_assert(kBN * 4 % kThreads == 0, "B tile: whole chunks per thread");

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices from shared memory; lane i gives the address of row i%8 of matrix i/8;
// register j gets matrix j, lane t holding its row t/4, columns 2(t%4), 2(t%4)+1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const __half* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d += a · b for one m16n8k16 tile (f16 inputs, f32 accumulators).
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int MI>
constexpr int smem_bytes() {
  return kStages * (32 * MI + kBN) * kLds * (int)sizeof(__half);
}

// Grid: one block per (M tile, N tile), M tiles fastest, so the blocks that share a weight tile
// run together and read it from L2 after the first.
template <int MI>
__global__ void __launch_bounds__(kThreads, 2)
    gemm_f16_mma_kernel(const __half* __restrict__ A, const __half* __restrict__ B, float* __restrict__ C, int M,
                        int N, int K, int64_t ldc, bool accumulate, int m_tiles) {
  constexpr int BM = 32 * MI;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* sA = reinterpret_cast<__half*>(smem_raw);  // [kStages][BM][kLds]
  __half* sB = sA + kStages * BM * kLds;             // [kStages][kBN][kLds]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;
  const int m0 = (int)(blockIdx.x % m_tiles) * BM;
  const int n0 = (int)(blockIdx.x / m_tiles) * kBN;

  // One stage: BM rows of A and 128 rows of B, 32 halves each = 4 chunks of 16 bytes per row;
  // chunk c = row c/4, quarter c%4 (a warp copies 8 whole rows, 64 contiguous bytes each).
  auto load_stage = [&](int stage, int k0) {
    __half* dA = sA + stage * BM * kLds;
    __half* dB = sB + stage * kBN * kLds;
#pragma unroll
    for (int it = 0; it < (BM * 4 + kThreads - 1) / kThreads; it++) {
      const int c = tid + it * kThreads;
      if ((BM * 4) % kThreads != 0 && c >= BM * 4) break;
      const int r = c >> 2, kc = (c & 3) * 8;
      const bool ok = m0 + r < M;
      cp_async16(dA + r * kLds + kc, A + (int64_t)(ok ? m0 + r : 0) * K + k0 + kc, ok);
    }
#pragma unroll
    for (int it = 0; it < kBN * 4 / kThreads; it++) {
      const int c = tid + it * kThreads;
      const int r = c >> 2, kc = (c & 3) * 8;
      const bool ok = n0 + r < N;
      cp_async16(dB + r * kLds + kc, B + (int64_t)(ok ? n0 + r : 0) * K + k0 + kc, ok);
    }
  };

  float acc[MI][4][4];
#pragma unroll
  for (int mi = 0; mi < MI; mi++)
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f;

  const int ktiles = K / kBK;
  // Prologue: stages 0 .. kStages-2 in flight (one commit group each, empty past the end).
#pragma unroll
  for (int st = 0; st < kStages - 1; st++) {
    if (st < ktiles) load_stage(st, st * kBK);
    cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; kt++) {
    // kStages-1+kt groups committed; at most kStages-2 pending => tile kt has landed (own
    // copies); the barrier makes every thread's copies visible and ends the reads of the
    // stage the prefetch below overwrites (the one computed at kt-1).
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int pf = kt + kStages - 1;
    if (pf < ktiles) load_stage(pf % kStages, pf * kBK);
    cp_async_commit();

    const __half* tA = sA + (kt % kStages) * BM * kLds;
    const __half* tB = sB + (kt % kStages) * kBN * kLds;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[MI][4], bf[4][2];
#pragma unroll
      for (int mi = 0; mi < MI; mi++) {
        // matrices: rows 0-7 / 8-15 (lane bit 3) x k 0-7 / 8-15 (lane bit 4) = a0..a3 order
        const int row = warp_m * (16 * MI) + mi * 16 + (lane & 15);
        ldmatrix_x4(af[mi], tA + row * kLds + kk + (lane >> 4) * 8);
      }
#pragma unroll
      for (int nj = 0; nj < 2; nj++) {
        // matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
        // = b0, b1 of n8 tile 2nj, then b0, b1 of tile 2nj+1
        const int nrow = warp_n * 32 + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
        uint32_t r[4];
        ldmatrix_x4(r, tB + nrow * kLds + kk + ((lane >> 3) & 1) * 8);
        bf[2 * nj][0] = r[0];
        bf[2 * nj][1] = r[1];
        bf[2 * nj + 1][0] = r[2];
        bf[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) mma_16816(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  cp_async_wait<0>();  // nothing real is pending (only empty groups); leave no copy behind

  // Accumulator layout: lane = 4*g + tg holds rows g and g+8, columns 2tg and 2tg+1.
  const int g = lane >> 2, tg = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MI; mi++)
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int row = m0 + warp_m * (16 * MI) + mi * 16 + g + 8 * h;
        const int col = n0 + warp_n * 32 + ni * 8 + 2 * tg;
        if (row >= M) continue;
        float* p = C + (int64_t)row * ldc + col;
#pragma unroll
        for (int e = 0; e < 2; e++) {
          if (col + e >= N) continue;
          const float v = acc[mi][ni][2 * h + e];
          p[e] = accumulate ? p[e] + v : v;
        }
      }
}

template <int MI>
bool launch_mma(const void* a, const void* b, float* c, int64_t M, int64_t N, int64_t K, int64_t ldc, bool accumulate,
                cudaStream_t s) {
  const int64_t m_tiles = (M + 32 * MI - 1) / (32 * MI);
  const int64_t n_tiles = (N + kBN - 1) / kBN;
  if (m_tiles * n_tiles > INT_MAX) return false;
  constexpr int bytes = smem_bytes<MI>();
  // Above 48 KB a block's dynamic shared memory needs the raised limit (a host-side attribute,
  // no launch, no allocation; cheap to repeat).
  if (cudaFuncSetAttribute(gemm_f16_mma_kernel<MI>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) !=
      cudaSuccess)
    return false;
  gemm_f16_mma_kernel<MI><<<(unsigned)(m_tiles * n_tiles), kThreads, bytes, s>>>(
      static_cast<const __half*>(a), static_cast<const __half*>(b), c, (int)M, (int)N, (int)K, ldc, accumulate,
      (int)m_tiles);
  return true;
}

bool gemm_mma(const void* a, const void* b, float* c, int64_t M, int64_t N, int64_t K, int64_t ldc, bool accumulate,
              cudaStream_t s) {
  // K % 32: whole k tiles; 16-byte aligned A and B: each row start is then 16-byte aligned too
  // (rows of K halves, K a multiple of 32), as cp.async of 16 bytes needs.
  if (K % kBK != 0) return false;
  if ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) % 16 != 0) return false;
  if (M <= 32) return launch_mma<1>(a, b, c, M, N, K, ldc, accumulate, s);
  if (M <= 64) return launch_mma<2>(a, b, c, M, N, K, ldc, accumulate, s);
  return launch_mma<4>(a, b, c, M, N, K, ldc, accumulate, s);
}

// ---- the table's entries -------------------------------------------------------------------
bool gemm_f16_auto(const void* a, const void* b, float* c, int64_t M, int64_t N, int64_t K, int64_t ldc,
                   bool accumulate, cudaStream_t s) {
  return gemm_f16_with(GemmBackend::automatic, a, b, c, M, N, K, ldc, accumulate, s);
}

const char* gemm_backend_name() {
  if (env_forces_wmma() || g_cublas_failed.load() || !cublas_lib().ok) return "wmma";
  return "cublas";
}

// dst[i] = f16(x[i]) (round to nearest even; beyond the f16 range: ±inf). Four per step where x
// is 16-byte and dst 8-byte aligned, the rest one by one.
__global__ void convert_f32_f16_kernel(const float* __restrict__ x, __half* __restrict__ dst, int64_t n,
                                       bool vec) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      const float4 v = reinterpret_cast<const float4*>(x)[i];
      __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
      uint2 u;
      u.x = *reinterpret_cast<uint32_t*>(&lo);
      u.y = *reinterpret_cast<uint32_t*>(&hi);
      reinterpret_cast<uint2*>(dst)[i] = u;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) dst[i] = __float2half_rn(x[i]);
}

bool convert_f32_f16(const float* x, void* dst, int64_t n, cudaStream_t s) {
  if (n < 0 || (n > 0 && (!x || !dst))) return false;
  if (n == 0) return true;
  const bool vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 8 == 0;
  const int64_t per_block = 256 * (vec ? 4 : 1);
  const int64_t blocks = (n + per_block - 1) / per_block;
  convert_f32_f16_kernel<<<(unsigned)(blocks < 8192 ? blocks : 8192), 256, 0, s>>>(x, static_cast<__half*>(dst), n,
                                                                                   vec);
  return true;
}

}  // namespace

bool gemm_f16_with(GemmBackend backend, const void* a, const void* b, float* c, int64_t M, int64_t N, int64_t K,
                   int64_t ldc, bool accumulate, cudaStream_t s) {
  if (!shape_ok(a, b, c, M, N, K, ldc)) return false;
  if (M == 0 || N == 0) return true;
  switch (backend) {
    case GemmBackend::cublas:
      return gemm_cublas(a, b, c, M, N, K, ldc, accumulate, s);
    case GemmBackend::wmma:
      return gemm_mma(a, b, c, M, N, K, ldc, accumulate, s);
    case GemmBackend::automatic:
      break;
  }
  if (!env_forces_wmma() && !g_cublas_failed.load()) {
    if (gemm_cublas(a, b, c, M, N, K, ldc, accumulate, s)) return true;
    g_cublas_failed.store(true);  // not loadable, or it refused: our kernel from now on
  }
  return gemm_mma(a, b, c, M, N, K, ldc, accumulate, s);
}

const char* cublas_unavailable_reason() {
  const CublasLib& L = cublas_lib();
  return L.ok ? "" : L.why.c_str();
}

void register_gemm(CudaKernels& t) {
  t.gemm_f16 = gemm_f16_auto;
  t.gemm_backend = gemm_backend_name;
  t.convert_f32_f16 = convert_f32_f16;
}

}  // namespace eoq::cuda
