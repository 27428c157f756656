// Sealing one block of cached keys or values (../shared/spec/kv-compression.md section 3):
// a low-rank part found by eOptShrink (rank from the eigenvalue spectrum, each kept singular
// value shrunk to its Frobenius-optimal value), stored as quantized factors, plus a TurboQuant
// residual (closed loop: the residual is taken against the low-rank part as stored).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace eoq {

// Eigen-decomposition of a symmetric n×n matrix (row-major, only symmetry assumed) by cyclic
// Jacobi rotations in double. w[n]: eigenvalues, descending. v[n*n] row-major with eigenvector
// k in column k (v[i*n + k]). Returns false if it did not converge in max_sweeps (results are
// still the best estimate). Meant for n <= 256.
// The slow reference (O(n³) per sweep, ~6–10 sweeps); seal_block uses eigh_tridiag.
bool eigh_jacobi(const double* a, int n, double* w, double* v, int max_sweeps = 60);

// The production eigensolver, same contract and layout as eigh_jacobi: Householder reduction to
// symmetric tridiagonal form (transformations accumulated), then implicit QL with Wilkinson
// shifts, all in double; the matrix is first scaled by a power of two (exact) so that its
// largest entry lies in [0.5, 1). Deterministic (one thread, fixed operation order). Returns
// false on non-finite input or if an eigenvalue needs more than 60 QL sweeps. Any n >= 1.
bool eigh_tridiag(const double* a, int n, double* w, double* v);

// The same solver in two phases, for callers that need only a few eigenvectors (seal_block):
// values() reduces a and runs QL without accumulating vectors, recording the plane rotations
// (O(n²) memory); vector(k) then rebuilds the eigenvector of w[k] alone by applying those
// rotations to a unit vector and back-transforming with the Householder reflections, O(n²) per
// vector instead of O(n³) for all. Mathematically the column k of eigh_tridiag's v (the same
// rotations, so the same vectors, equal up to rounding). vector() needs a successful values()
// (after a failed one it still returns vectors, of the unconverged reduction).
// Reusing one object avoids allocation.
class SymEig {
 public:
  bool values(const double* a, int n, double* w);
  void vector(int k, double* out, int stride = 1) const;  // out[i * stride], i < n
  // Several at once (one pass over the rotations): the vector of w[ks[c]] in out[i * ld + c].
  void vectors(const int* ks, int count, double* out, int ld) const;
  int n() const { return n_; }

 private:
  friend bool eigh_tridiag(const double* a, int n, double* w, double* v);
  struct Rot {
    double c, s;
    int i;
  };
  int load(const double* a, int n);  // 1: ok, 0: zero matrix, -1: non-finite
  void tridiagonalize();
  bool ql(double* zt);
  void sort_values();
  int n_ = 0, ex_ = 0, state_ = 0;
  bool record_ = false;
  std::vector<double> a_, hv_, beta_, d_, e_, p_, zt_;
  std::vector<Rot> rot_;
  std::vector<int> order_;
  mutable std::vector<double> y_;
};

enum class Eigensolver : int { tridiag_ql = 0, jacobi = 1 };

// eOptShrink from the eigenvalues of XᵀX (spec section 3.1). lambda: the p largest
// eigenvalues, descending, p = min(rows, cols) of X, N = max(rows, cols) (β = p/N <= 1).
// rank: components that stand clear of the bulk (before any cap); phi[rank]: the shrunk
// singular values (0 where the estimate is invalid: that component should be dropped).
// edge: the bulk-edge estimate (<= 0 or non-finite means a degenerate spectrum: rank 0).
struct EOptShrinkResult {
  int rank = 0;
  int k = 0;
  double edge = 0;
  bool degenerate = false;  // no usable bulk edge (edge <= 1e-12 λ[1] or non-finite)
  std::vector<double> phi;
};
EOptShrinkResult eoptshrink(const double* lambda, int p, int N);

struct SealParams {
  int bits = 2;          // residual TurboQuant bits (1..8)
  int rank_cap = 0;      // max low-rank components (0: plain TurboQuant, no eigen-decomposition)
  int factor_bits = 4;   // bits of coefficient and basis codes (2..8), symmetric levels ±(2^(b-1)-1)
  bool shrink = true;    // eOptShrink gains φ/σ (true) or 1 (truncation)
  bool norm_correction = true;
  // Row norms stored as f16 (16) or as 8-bit log-domain codes with one exponent per block (8:
  // kernels/turboquant.h log_norm_*; a block whose largest norm exceeds 2^15 keeps f16 norms).
  int norm_bits = 16;
  // The caller already replaced non-finite input by 0 (the KV cache does so at append): store
  // the block as an exact copy all the same, as for non-finite input (counted as such).
  bool nonfinite_input = false;
  // Eigen-decomposition of XᵀX. The environment variable EOQ_SEAL_EIGH=jacobi (read at each
  // call) forces the Jacobi reference, so tests can compare the two on the same build.
  Eigensolver eigensolver = Eigensolver::tridiag_ql;
};

// What one sealed matrix (n tokens × d, in the rotated basis) stores.
//  kind compressed: X̂ = dequant(C) · dequant(Bm) + residual rows
//    C (n×r) codes column-major (component i's n codes together: what attention reads), Bm (r×d)
//    codes row-major, both packed
//    factor_bits-bit fields holding code + qmax; coef_scale[i] per column, basis_scale[i] per row
//    (f16); gains[i] f16 (stored for statistics and counted, the factors already include them).
//    Residual: per token, packed bits-bit Lloyd–Max indices (code_bytes per row) and a norm: f16
//    (norms) or, with norm_bits 8, a log-domain byte (norm_codes) under the block's norm_shift
//    (kept in the header's flags).
//  kind exact: f16 copy (the fallback for non-finite input or overflowing norms).
struct SealedBlock {
  enum Kind : uint8_t { compressed = 0, exact = 1 };
  static constexpr int kHeaderBytes = 8;  // kind, rank, bits, factor_bits, n (u16), flags (u16)
  Kind kind = compressed;
  int n = 0, d = 0, bits = 0, rank = 0, factor_bits = 4;
  std::vector<uint8_t> coef_codes, basis_codes;
  std::vector<uint16_t> coef_scale, basis_scale, gains;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> norms;      // [n] f16, or empty when norm_codes holds them
  std::vector<uint8_t> norm_codes;  // [n] 8-bit log-domain norms (norm_bits 8)
  int norm_shift = 0;
  std::vector<uint16_t> exact_f16;
  size_t code_bytes() const { return ((size_t)d * bits + 7) / 8; }
  // Row t's norm as f16 bits, whichever way it is stored.
  uint16_t norm_f16(int t) const;
  // The f16 norms of rows [a, a + m): a pointer into `norms`, or decoded into scratch[m].
  const uint16_t* norms_f16(int a, int m, uint16_t* scratch) const;
  size_t bytes() const;  // every buffer above plus the header
  // Dequantized factors: coef[n*r] (row-major), basis[r*d] (row-major).
  void factors(float* coef, float* basis) const;
  // The same with the coefficients transposed, coefT[r*n] (component-major, as stored: what
  // attention reads).
  void factors_transposed(float* coefT, float* basis) const;
  // Explicit reconstruction, X̂[n*d] (what attention from the codes is equivalent to).
  void dequantize(float* out) const;
};

// Why a block did not get the ordinary treatment.
enum class SealFallback : int {
  none = 0,
  turbo_zero = 1,        // all-zero block: r = 0
  turbo_degenerate = 2,  // spectrum without a noise bulk (repeated rows, exact low rank), or the
                         // eigen-decomposition / factor scales failed: r = 0
  exact_nonfinite = 3,   // NaN or inf in the input: exact f16 copy, non-finite values set to 0
  exact_overflow = 4,    // a residual norm overflows f16: exact f16 copy (clamped)
};
const char* seal_fallback_name(SealFallback f);

struct SealInfo {
  int rank_raw = 0;             // eOptShrink rank before the cap (0 when rank_cap == 0)
  int rank = 0;                 // components stored
  std::vector<double> sigma;    // singular values of the stored components
  std::vector<double> phi;      // their eOptShrink values
  std::vector<double> gains;    // g_i as applied (φ/σ or 1)
  double rel_err = 0;           // ‖X − X̂‖ / ‖X‖ (0 for a zero block)
  double lowrank_energy = 0;    // ‖X V_r‖² / ‖X‖² of the kept directions
  SealFallback fallback = SealFallback::none;
};

// X: n×d row-major (finite or not). Fills out and info. Throws Error(invalid_arg) on bad params.
void seal_block(const float* X, int n, int d, const SealParams& p, SealedBlock& out, SealInfo& info);

}  // namespace eoq
