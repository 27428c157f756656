// Eigensolvers (Householder + QL, Jacobi reference), eOptShrink and block sealing (engine/eoptshrink.h).
#include "engine/eoptshrink.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>

#include "base/error.h"
#include "base/fp16.h"
#include "kernels/kernels.h"
#include "kernels/turboquant.h"

namespace eoq {

bool eigh_jacobi(const double* a_in, int n, double* w, double* v, int max_sweeps) {
  std::vector<double> a(a_in, a_in + (size_t)n * n);
  for (int i = 0; i < n; i++)  // symmetrise (callers pass Gram matrices; guards rounding)
    for (int j = i + 1; j < n; j++) a[(size_t)i * n + j] = a[(size_t)j * n + i] = 0.5 * (a[(size_t)i * n + j] + a[(size_t)j * n + i]);
  std::vector<double> vv((size_t)n * n, 0.0);
  for (int i = 0; i < n; i++) vv[(size_t)i * n + i] = 1;
  double total = 0;
  for (double x : a) total += x * x;
  bool converged = false;
  for (int sweep = 0; sweep < max_sweeps && !converged; sweep++) {
    double off = 0;
    for (int i = 0; i < n; i++)
      for (int j = i + 1; j < n; j++) off += a[(size_t)i * n + j] * a[(size_t)i * n + j];
    if (!(off > 1e-30 * total)) {  // relative off-diagonal mass ~1e-15 of ‖A‖: done (also NaN)
      converged = off == off;
      break;
    }
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) {
        const double apq = a[(size_t)p * n + q];
        if (apq == 0) continue;
        const double app = a[(size_t)p * n + p], aqq = a[(size_t)q * n + q];
        // Skip rotations that can no longer change anything at double precision (relative
        // to the two diagonal entries, the Demmel–Veselić criterion).
        if (std::fabs(apq) <= 1e-16 * std::sqrt(std::fabs(app) * std::fabs(aqq))) {
          a[(size_t)p * n + q] = a[(size_t)q * n + p] = 0;
          continue;
        }
        // Rotation P (P_pp = P_qq = c, P_pq = s, P_qp = -s) with (PᵀAP)_pq = 0. A stays
        // symmetric, so rows p and q are updated and mirrored into columns p and q.
        const double theta = (aqq - app) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        double* rp = &a[(size_t)p * n];
        double* rq = &a[(size_t)q * n];
        for (int k = 0; k < n; k++) {
          if (k == p || k == q) continue;
          const double apk = rp[k], aqk = rq[k];
          rp[k] = a[(size_t)k * n + p] = c * apk - s * aqk;
          rq[k] = a[(size_t)k * n + q] = s * apk + c * aqk;
        }
        rp[p] = app - t * apq;
        rq[q] = aqq + t * apq;
        rp[q] = rq[p] = 0;
        for (int k = 0; k < n; k++) {  // V P
          double* row = &vv[(size_t)k * n];
          const double vkp = row[p], vkq = row[q];
          row[p] = c * vkp - s * vkq;
          row[q] = s * vkp + c * vkq;
        }
      }
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int x, int y) { return a[(size_t)x * n + x] > a[(size_t)y * n + y]; });
  for (int k = 0; k < n; k++) {
    w[k] = a[(size_t)order[k] * n + order[k]];
    for (int i = 0; i < n; i++) v[(size_t)i * n + k] = vv[(size_t)i * n + order[k]];
  }
  return converged;
}

namespace {

// Σ a[j] b[j] with four partial sums in a fixed order (deterministic; vectorisable).
inline double dot4(const double* a, const double* b, int m) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int j = 0;
  for (; j + 4 <= m; j += 4) {
    s0 += a[j] * b[j];
    s1 += a[j + 1] * b[j + 1];
    s2 += a[j + 2] * b[j + 2];
    s3 += a[j + 3] * b[j + 3];
  }
  for (; j < m; j++) s0 += a[j] * b[j];
  return (s0 + s1) + (s2 + s3);
}

// Σ x[j] b[j] (x float), as dot4.
inline double dot4f(const float* x, const double* b, int m) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int j = 0;
  for (; j + 4 <= m; j += 4) {
    s0 += x[j] * b[j];
    s1 += x[j + 1] * b[j + 1];
    s2 += x[j + 2] * b[j + 2];
    s3 += x[j + 3] * b[j + 3];
  }
  for (; j < m; j++) s0 += x[j] * b[j];
  return (s0 + s1) + (s2 + s3);
}

// sqrt(f² + g²) without the cost of std::hypot in the usual range.
inline double norm2(double f, double g) {
  const double m = std::max(std::fabs(f), std::fabs(g));
  if (m > 1e-150 && m < 1e150) return std::sqrt(f * f + g * g);
  return std::hypot(f, g);
}

}  // namespace

// Loads a (symmetrised) into a_, scaled by 2^-ex_ so that the largest entry lies in [0.5, 1).
int SymEig::load(const double* a_in, int n) {
  n_ = n;
  ex_ = 0;
  const size_t nn = (size_t)n * n;
  a_.resize(nn);
  hv_.resize(nn);
  beta_.resize(n);
  d_.resize(n);
  e_.resize(n);
  p_.resize(n);
  order_.resize(n);
  double amax = 0;
  bool finite = true;
  for (size_t i = 0; i < nn; i++) {
    const double x = a_in[i];
    if (!std::isfinite(x)) finite = false;
    else amax = std::max(amax, std::fabs(x));
  }
  if (!finite) return -1;
  if (amax == 0) return 0;
  std::frexp(amax, &ex_);
  double* A = a_.data();
  for (int i = 0; i < n; i++)
    for (int j = i; j < n; j++) {
      const double x = std::ldexp(0.5 * a_in[(size_t)i * n + j] + 0.5 * a_in[(size_t)j * n + i], -ex_);
      A[(size_t)i * n + j] = A[(size_t)j * n + i] = x;
    }
  return 1;
}

// A = Q T Qᵀ with T tridiagonal (d_, e_; e_[i] = T(i, i+1), e_[n−1] = 0) and
// Q = H_0 H_1 ··· H_{n−3}, H_k = I − beta_[k] h_k h_kᵀ (h_k in row k of hv_, entries k+1..n−1).
// Step k annihilates row/column k of the trailing block beyond its first subdiagonal entry.
// Only the lower triangle of the trailing block is read and updated.
void SymEig::tridiagonalize() {
  const int n = n_;
  double* A = a_.data();
  double* p = p_.data();
  for (int k = 0; k + 2 < n; k++) {
    const int m = n - k - 1;
    // Column k below the diagonal (lower triangle: a strided column; copied into h).
    double* h = hv_.data() + (size_t)k * n + k + 1;
    for (int i = 0; i < m; i++) h[i] = A[(size_t)(k + 1 + i) * n + k];
    d_[k] = A[(size_t)k * n + k];
    double sigma = 0;
    for (int i = 1; i < m; i++) sigma += h[i] * h[i];
    if (sigma == 0) {  // already tridiagonal in this column
      e_[k] = h[0];
      beta_[k] = 0;
      continue;
    }
    const double x0 = h[0];
    const double norm = std::sqrt(x0 * x0 + sigma);
    const double alpha = x0 >= 0 ? -norm : norm;  // H x = alpha e1, no cancellation in h[0]
    h[0] = x0 - alpha;
    const double beta = 2 / (h[0] * h[0] + sigma);
    beta_[k] = beta;
    e_[k] = alpha;
    // Trailing block B (rows/columns k+1..n−1) ← H B H = B − h qᵀ − q hᵀ, where
    // p = beta B h and q = p − (beta/2)(hᵀp) h. B h from the lower triangle: row i gives
    // Σ_{j<=i} B_ij h_j to p_i and B_ij h_i to p_j (j < i).
    double* B = A + (size_t)(k + 1) * n + k + 1;
    std::fill(p, p + m, 0.0);
    for (int i = 0; i < m; i++) {
      const double* row = B + (size_t)i * n;
      const double hi = h[i];
      p[i] += dot4(row, h, i) + row[i] * hi;
      for (int j = 0; j < i; j++) p[j] += row[j] * hi;
    }
    for (int i = 0; i < m; i++) p[i] *= beta;
    const double K = 0.5 * beta * dot4(h, p, m);
    for (int i = 0; i < m; i++) p[i] -= K * h[i];
    for (int i = 0; i < m; i++) {
      double* row = B + (size_t)i * n;
      const double hi = h[i], qi = p[i];
      for (int j = 0; j <= i; j++) row[j] -= hi * p[j] + qi * h[j];
    }
  }
  if (n >= 2) {
    d_[n - 2] = A[(size_t)(n - 2) * n + n - 2];
    e_[n - 2] = A[(size_t)(n - 1) * n + n - 2];
  }
  d_[n - 1] = A[(size_t)(n - 1) * n + n - 1];
  e_[n - 1] = 0;
}

// Implicit QL with Wilkinson shifts on (d_, e_), eigenvalues left in d_. Each plane rotation
// of rows i, i+1 goes to zt (eigenvectors as rows, if zt) and to rot_ (if record_). The d/e
// arithmetic does not depend on either, so the eigenvalues are the same bit for bit in every
// mode. Returns false if an eigenvalue takes more than 60 sweeps.
bool SymEig::ql(double* zt) {
  const int n = n_;
  double* d = d_.data();
  double* e = e_.data();
  const double eps = std::numeric_limits<double>::epsilon();
  rot_.clear();
  // e[m] is negligible when it is small against its two diagonal neighbours, or against the
  // whole matrix (‖T‖∞): the absolute test settles clusters of eigenvalues at the rounding level
  // (zero eigenvalues of a rank-deficient Gram matrix) that the relative test alone never does.
  double tnorm = 0;
  for (int i = 0; i < n; i++)
    tnorm = std::max(tnorm, std::fabs(d[i]) + std::fabs(e[i]) + (i > 0 ? std::fabs(e[i - 1]) : 0.0));
  const double tiny = eps * tnorm;
  bool ok = true;
  for (int l = 0; l < n; l++) {
    int iter = 0;
    for (;;) {
      int m = l;
      for (; m < n - 1; m++) {  // first negligible e[m] at or after l (e[n−1] = 0)
        const double em = std::fabs(e[m]);
        if (em <= tiny || em <= eps * (std::fabs(d[m]) + std::fabs(d[m + 1]))) break;
      }
      if (m == l) break;
      if (++iter > 60) {
        ok = false;
        break;
      }
      // Shift: the eigenvalue of the leading 2×2 of the block closer to d[l].
      double g = (d[l + 1] - d[l]) / (2 * e[l]);
      double r = norm2(g, 1.0);
      g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
      double s = 1, c = 1, p = 0;
      bool early = false;
      for (int i = m - 1; i >= l; i--) {
        const double f = s * e[i], b = c * e[i];
        r = norm2(f, g);
        e[i + 1] = r;
        if (r == 0) {  // underflow: the block splits here
          d[i + 1] -= p;
          e[m] = 0;
          early = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + 2 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
        if (record_) rot_.push_back(Rot{c, s, i});
        if (zt) {
          double* zi = zt + (size_t)i * n;
          double* zj = zi + n;
          for (int k = 0; k < n; k++) {
            const double x = zi[k], y = zj[k];
            zj[k] = s * x + c * y;
            zi[k] = c * x - s * y;
          }
        }
      }
      if (early) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0;
    }
  }
  return ok;
}

// order_: positions of d_ by eigenvalue, descending (NaN last, ties by position).
void SymEig::sort_values() {
  std::iota(order_.begin(), order_.end(), 0);
  const double* d = d_.data();
  std::stable_sort(order_.begin(), order_.end(), [d](int x, int y) {
    if (std::isnan(d[x])) return false;
    if (std::isnan(d[y])) return true;
    return d[x] > d[y];
  });
}

bool SymEig::values(const double* a, int n, double* w) {
  state_ = 0;
  if (n <= 0) return true;
  state_ = load(a, n);
  if (state_ <= 0) {
    for (int k = 0; k < n; k++) w[k] = state_ == 0 ? 0.0 : std::numeric_limits<double>::quiet_NaN();
    return state_ == 0;
  }
  tridiagonalize();
  record_ = true;
  const bool ok = ql(nullptr);
  record_ = false;
  sort_values();
  for (int k = 0; k < n; k++) w[k] = std::ldexp(d_[order_[k]], ex_);
  return ok;
}

void SymEig::vectors(const int* ks, int count, double* out, int ld) const {
  const int n = n_;
  if (count <= 0) return;
  if (state_ <= 0) {  // zero (or non-finite) matrix: the unit vectors, as eigh_tridiag
    for (int i = 0; i < n; i++)
      for (int c = 0; c < count; c++) out[(size_t)i * ld + c] = i == ks[c] ? 1.0 : 0.0;
    return;
  }
  // The eigenvectors are the rows of Zt = R_K ··· R_1 Qᵀ (R_j: the QL rotations in order), so
  // the one at position o is Q R_1ᵀ ··· R_Kᵀ e_o: rotations last to first, then reflections,
  // H_{n−3} first. The vectors are interleaved (y[i * count + c]) so that one pass over the
  // rotations serves all of them, with independent dependency chains.
  y_.assign((size_t)n * count, 0.0);
  double* y = y_.data();
  for (int c = 0; c < count; c++) y[(size_t)order_[ks[c]] * count + c] = 1;
  for (size_t j = rot_.size(); j-- > 0;) {
    const Rot& R = rot_[j];
    double* ya = y + (size_t)R.i * count;
    double* yb = ya + count;
    for (int c = 0; c < count; c++) {
      const double a = ya[c], b = yb[c];
      ya[c] = R.c * a + R.s * b;
      yb[c] = R.c * b - R.s * a;
    }
  }
  double s[16];
  for (int c0 = 0; c0 < count; c0 += 16) {
    const int cn = std::min(16, count - c0);
    for (int kk = n - 3; kk >= 0; kk--) {
      const double beta = beta_[kk];
      if (beta == 0) continue;
      const int m = n - kk - 1;
      const double* h = hv_.data() + (size_t)kk * n + kk + 1;
      double* t = y + (size_t)(kk + 1) * count + c0;
      for (int c = 0; c < cn; c++) s[c] = 0;
      for (int i = 0; i < m; i++)
        for (int c = 0; c < cn; c++) s[c] += h[i] * t[(size_t)i * count + c];
      for (int c = 0; c < cn; c++) s[c] *= beta;
      for (int i = 0; i < m; i++)
        for (int c = 0; c < cn; c++) t[(size_t)i * count + c] -= s[c] * h[i];
    }
  }
  for (int i = 0; i < n; i++)
    for (int c = 0; c < count; c++) out[(size_t)i * ld + c] = y[(size_t)i * count + c];
}

void SymEig::vector(int k, double* out, int stride) const { vectors(&k, 1, out, stride); }

bool eigh_tridiag(const double* a, int n, double* w, double* v) {
  if (n <= 0) return true;
  thread_local SymEig se;
  se.state_ = se.load(a, n);
  if (se.state_ <= 0) {
    for (int k = 0; k < n; k++) w[k] = se.state_ == 0 ? 0.0 : std::numeric_limits<double>::quiet_NaN();
    std::fill(v, v + (size_t)n * n, 0.0);
    for (int k = 0; k < n; k++) v[(size_t)k * n + k] = 1;
    return se.state_ == 0;
  }
  se.tridiagonalize();
  // zt ← Qᵀ = H_{n−3} ··· H_1 H_0, accumulated from the right (zt ← zt H_k, k descending),
  // which only touches rows/columns k+1..n−1.
  se.zt_.assign((size_t)n * n, 0.0);
  double* Z = se.zt_.data();
  for (int i = 0; i < n; i++) Z[(size_t)i * n + i] = 1;
  for (int k = n - 3; k >= 0; k--) {
    const double beta = se.beta_[k];
    if (beta == 0) continue;
    const int m = n - k - 1;
    const double* h = se.hv_.data() + (size_t)k * n + k + 1;
    for (int i = k + 1; i < n; i++) {
      double* row = Z + (size_t)i * n + k + 1;
      const double s = beta * dot4(row, h, m);
      for (int j = 0; j < m; j++) row[j] -= s * h[j];
    }
  }
  se.record_ = false;
  const bool ok = se.ql(Z);
  se.sort_values();
  for (int k = 0; k < n; k++) {
    const int o = se.order_[k];
    w[k] = std::ldexp(se.d_[o], se.ex_);
    const double* z = Z + (size_t)o * n;
    for (int i = 0; i < n; i++) v[(size_t)i * n + k] = z[i];
  }
  return ok;
}

EOptShrinkResult eoptshrink(const double* lam, int p, int N) {
  EOptShrinkResult res;
  if (p < 4 || N < p) return res;  // too few eigenvalues for a bulk estimate
  // 1-based λ[i] is lam[i - 1].
  auto L = [&](int i) { return lam[i - 1]; };
  const double c = std::min(1.0 / 2.01, 1.0 / std::log(std::log((double)p)));
  const int k = (int)std::floor(std::pow((double)p, c));
  res.k = k;
  if (k < 1 || 2 * k + 1 > p) return res;
  const double den = std::pow(2.0, 2.0 / 3.0) - 1;
  const double edge = L(k + 1) + (L(k + 1) - L(2 * k + 1)) / den;
  res.edge = edge;
  // A degenerate spectrum (no noise bulk: zeros, repeated rows, exact low rank) gives no edge.
  if (!(edge > 1e-12 * std::fabs(L(1))) || !std::isfinite(edge)) {
    res.degenerate = true;
    return res;
  }
  const double thr = std::pow((double)p, -1.0 / 3.0);
  int r = 0;
  for (int i = 1; i <= p; i++)
    if (L(i) / edge - 1 > thr) r++;
  r = std::min(r, p - 2 * k - 1);
  res.rank = r;
  if (r <= 0) return res;
  const double beta = (double)p / N;
  const double a = L(r + k + 1), b = L(r + 2 * k + 1);
  std::vector<double> noise;
  noise.reserve(p - r);
  for (int j = 1; j <= k; j++) noise.push_back(a + (1 - std::pow((double)j / k, 2.0 / 3.0)) * (a - b) / den);
  for (int i = r + k + 1; i <= p; i++) noise.push_back(L(i));
  res.phi.assign(r, 0.0);
  for (int i = 1; i <= r; i++) {
    const double z = L(i);
    double m1 = 0, m1d = 0;
    for (double nu : noise) {
      const double q = 1 / (nu - z);
      m1 += q;
      m1d += q * q;
    }
    m1 /= noise.size();
    m1d /= noise.size();
    const double m2 = -(1 - beta) / z + beta * m1;
    const double m2d = (1 - beta) / (z * z) + beta * m1d;
    const double T = z * m1 * m2;
    const double Td = m1 * m2 + z * m1d * m2 + z * m1 * m2d;
    if (!(T > 0) || !std::isfinite(T) || !std::isfinite(Td) || Td == 0) continue;
    const double dh = 1 / std::sqrt(T);
    const double a1 = m1 / (dh * dh * Td), a2 = m2 / (dh * dh * Td);
    if (a1 > 0 && a2 > 0) {
      const double phi = dh * std::sqrt(a1 * a2);
      if (std::isfinite(phi)) res.phi[i - 1] = phi;
    }
  }
  return res;
}

const char* seal_fallback_name(SealFallback f) {
  switch (f) {
    case SealFallback::none: return "none";
    case SealFallback::turbo_zero: return "turbo_zero";
    case SealFallback::turbo_degenerate: return "turbo_degenerate";
    case SealFallback::exact_nonfinite: return "exact_nonfinite";
    case SealFallback::exact_overflow: return "exact_overflow";
  }
  return "unknown";
}

size_t SealedBlock::bytes() const {
  return kHeaderBytes + coef_codes.size() + basis_codes.size() + norm_codes.size() +
         2 * (coef_scale.size() + basis_scale.size() + gains.size() + norms.size() + exact_f16.size()) + codes.size();
}

uint16_t SealedBlock::norm_f16(int t) const {
  return norm_codes.empty() ? norms[t] : log_norm_f16(norm_codes[t], norm_shift);
}

const uint16_t* SealedBlock::norms_f16(int a, int m, uint16_t* scratch) const {
  if (norm_codes.empty()) return norms.data() + a;
  cpu_kernels().decode_log_norms(norm_codes.data() + a, m, norm_shift, scratch);
  return scratch;
}

void SealedBlock::factors(float* coef, float* basis) const {
  const int qmax = (1 << (factor_bits - 1)) - 1;
  thread_local std::vector<uint8_t> q;
  q.resize((size_t)n * rank + (size_t)rank * d);
  unpack_bits(coef_codes.data(), (int64_t)n * rank, factor_bits, q.data());
  unpack_bits(basis_codes.data(), (int64_t)rank * d, factor_bits, q.data() + (size_t)n * rank);
  for (int i = 0; i < rank; i++) {
    const float cs = fp16_to_fp32(coef_scale[i]);
    for (int t = 0; t < n; t++) coef[(size_t)t * rank + i] = cs * (float)((int)q[(size_t)i * n + t] - qmax);
    const float bs = fp16_to_fp32(basis_scale[i]);
    const uint8_t* qb = q.data() + (size_t)n * rank + (size_t)i * d;
    for (int j = 0; j < d; j++) basis[(size_t)i * d + j] = bs * (float)((int)qb[j] - qmax);
  }
}

namespace {

// out[k] = lut[field first + k] for k < count, fields of a `bits`-bit stream (LSB first;
// kernels/turboquant.h pack_bits): the kernel from a byte boundary, the first fields before it
// one at a time.
void decode_fields(const uint8_t* buf, int64_t first, int count, int bits, const float* lut, float* out) {
  int k = 0;
  for (; k < count && ((first + k) * bits) % 8 != 0; k++) out[k] = lut[get_bits(buf, first + k, bits)];
  if (k < count) cpu_kernels().decode_codes(buf + (first + k) * bits / 8, count - k, bits, lut, out + k);
}

}  // namespace

void SealedBlock::factors_transposed(float* coefT, float* basis) const {
  const int qmax = (1 << (factor_bits - 1)) - 1;
  float lut[256];
  for (int i = 0; i < rank; i++) {
    const float cs = fp16_to_fp32(coef_scale[i]);
    for (int c = 0; c < (1 << factor_bits); c++) lut[c] = cs * (float)(c - qmax);
    decode_fields(coef_codes.data(), (int64_t)i * n, n, factor_bits, lut, coefT + (size_t)i * n);
    const float bs = fp16_to_fp32(basis_scale[i]);
    for (int c = 0; c < (1 << factor_bits); c++) lut[c] = bs * (float)(c - qmax);
    decode_fields(basis_codes.data(), (int64_t)i * d, d, factor_bits, lut, basis + (size_t)i * d);
  }
}

void SealedBlock::dequantize(float* out) const {
  if (kind == exact) {
    for (size_t i = 0; i < (size_t)n * d; i++) out[i] = fp16_to_fp32(exact_f16[i]);
    return;
  }
  const TurboRowCodec codec(d, bits);
  const size_t cb = code_bytes();
  for (int t = 0; t < n; t++) codec.decode(codes.data() + t * cb, norm_f16(t), out + (size_t)t * d);
  if (rank == 0) return;
  std::vector<float> coef((size_t)n * rank), basis((size_t)rank * d);
  factors(coef.data(), basis.data());
  for (int t = 0; t < n; t++)
    for (int j = 0; j < d; j++) {
      float s = 0;
      for (int i = 0; i < rank; i++) s += coef[(size_t)t * rank + i] * basis[(size_t)i * d + j];
      out[(size_t)t * d + j] += s;
    }
}

namespace {

uint16_t clamp_f16(float x) {
  if (!std::isfinite(x)) return 0;
  return fp32_to_fp16(std::min(std::max(x, -65504.0f), 65504.0f));
}

void make_exact(const float* X, int n, int d, SealedBlock& out) {
  out.kind = SealedBlock::exact;
  out.rank = 0;
  out.coef_codes.clear();
  out.basis_codes.clear();
  out.coef_scale.clear();
  out.basis_scale.clear();
  out.gains.clear();
  out.codes.clear();
  out.norms.clear();
  out.norm_codes.clear();
  out.norm_shift = 0;
  out.exact_f16.resize((size_t)n * d);
  for (size_t i = 0; i < (size_t)n * d; i++) out.exact_f16[i] = clamp_f16(X[i]);
}

// Symmetric factor_bits quantizer with an f16 scale: codes in [-qmax, qmax], scale = amax/qmax
// rounded to f16 (the codes are chosen against the rounded scale). Returns false if the scale
// overflows f16.
bool quantize_factor(const double* x, int count, int stride, int qmax, uint16_t& scale16, int* q) {
  double amax = 0;
  for (int i = 0; i < count; i++) amax = std::max(amax, std::fabs(x[(size_t)i * stride]));
  scale16 = fp32_to_fp16((float)(amax / qmax));
  const float s = fp16_to_fp32(scale16);
  std::fill(q, q + count, 0);
  if (!std::isfinite(s)) return false;
  if (s == 0) return true;
  for (int i = 0; i < count; i++) {
    const long v = std::lround(x[(size_t)i * stride] / s);
    q[i] = (int)std::min<long>(std::max<long>(v, -qmax), qmax);
  }
  return true;
}

// Per-thread buffers of seal_block (sealing allocates only the stored block in steady state).
struct SealWork {
  std::vector<double> G, w, V, C, Bm, xd;
  SymEig eig;
  std::vector<int> comp, cq, bq;
  std::vector<float> Lq, coef, basis, R, Rh;
};

SealWork& seal_work() {
  thread_local SealWork sw;
  return sw;
}

// G = XᵀX (d×d, double, both triangles). Four rows at a time: each pass over the lower
// triangle of G adds four rank-1 terms (the inner loop runs over contiguous j and vectorises).
void gram(const float* X, int n, int d, SealWork& sw) {
  sw.G.assign((size_t)d * d, 0.0);
  sw.xd.resize((size_t)4 * d);
  double* G = sw.G.data();
  double* x0 = sw.xd.data();
  double* x1 = x0 + d;
  double* x2 = x1 + d;
  double* x3 = x2 + d;
  int t = 0;
  for (; t + 4 <= n; t += 4) {
    const float* src = X + (size_t)t * d;
    for (int j = 0; j < 4 * d; j++) x0[j] = src[j];
    for (int i = 0; i < d; i++) {
      const double a0 = x0[i], a1 = x1[i], a2 = x2[i], a3 = x3[i];
      double* g = G + (size_t)i * d;
      for (int j = 0; j <= i; j++) g[j] += a0 * x0[j] + a1 * x1[j] + a2 * x2[j] + a3 * x3[j];
    }
  }
  for (; t < n; t++) {
    const float* src = X + (size_t)t * d;
    for (int j = 0; j < d; j++) x0[j] = src[j];
    for (int i = 0; i < d; i++) {
      const double a0 = x0[i];
      double* g = G + (size_t)i * d;
      for (int j = 0; j <= i; j++) g[j] += a0 * x0[j];
    }
  }
  for (int i = 0; i < d; i++)
    for (int j = i + 1; j < d; j++) G[(size_t)i * d + j] = G[(size_t)j * d + i];
}

}  // namespace

void seal_block(const float* X, int n, int d, const SealParams& p, SealedBlock& out, SealInfo& info) {
  if (n <= 0 || d <= 0) fail(ErrorCode::invalid_arg, "seal_block: empty block");
  if (p.bits < 1 || p.bits > 8) fail(ErrorCode::invalid_arg, "seal_block: residual bits must be in 1..8");
  if (p.norm_bits != 8 && p.norm_bits != 16) fail(ErrorCode::invalid_arg, "seal_block: norm_bits must be 8 or 16");
  if (p.rank_cap < 0) fail(ErrorCode::invalid_arg, "seal_block: rank_cap must be >= 0");
  if (p.rank_cap > 0 && (p.factor_bits < 2 || p.factor_bits > 8))
    fail(ErrorCode::invalid_arg, "seal_block: factor_bits must be in 2..8");
  info = SealInfo();
  out = SealedBlock();
  out.n = n;
  out.d = d;
  out.bits = p.bits;
  out.factor_bits = p.factor_bits;

  const size_t nd = (size_t)n * d;
  // ‖X‖² over the finite entries, four partial sums (independent chains, fixed order).
  double xs[4] = {0, 0, 0, 0};
  bool finite = true;
  {
    size_t i = 0;
    for (; i + 4 <= nd; i += 4)
      for (int k = 0; k < 4; k++) {
        const double x = X[i + k];
        const bool f = std::isfinite(x);
        finite = finite && f;
        xs[k] += f ? x * x : 0.0;
      }
    for (; i < nd; i++) {
      const double x = X[i];
      const bool f = std::isfinite(x);
      finite = finite && f;
      xs[0] += f ? x * x : 0.0;
    }
  }
  const double xnorm2 = (xs[0] + xs[1]) + (xs[2] + xs[3]);
  if (!finite || p.nonfinite_input) {
    // Non-finite input: an exact copy with the non-finite entries zeroed, so attention stays finite.
    make_exact(X, n, d, out);
    info.fallback = SealFallback::exact_nonfinite;
    std::vector<float> xh(nd);
    out.dequantize(xh.data());
    double e2 = 0;
    for (size_t i = 0; i < nd; i++)
      if (std::isfinite(X[i])) e2 += ((double)X[i] - xh[i]) * ((double)X[i] - xh[i]);
    info.rel_err = xnorm2 > 0 ? std::sqrt(e2 / xnorm2) : 0;
    return;
  }

  // ---- stage 1: low-rank part ----
  SealWork& sw = seal_work();
  int r = 0;
  std::vector<double>& C = sw.C;    // n×r row-major (before quantization)
  std::vector<double>& Bm = sw.Bm;  // r×d row-major
  std::vector<int>& comp = sw.comp; // kept eigen-indices
  comp.clear();
  if (xnorm2 == 0) {
    info.fallback = SealFallback::turbo_zero;
  } else if (p.rank_cap > 0) {
    std::vector<double>& w = sw.w;
    std::vector<double>& V = sw.V;
    gram(X, n, d, sw);
    w.resize(d);
    V.resize((size_t)d * d);
    bool jacobi = p.eigensolver == Eigensolver::jacobi;
    if (const char* env = std::getenv("EOQ_SEAL_EIGH")) jacobi = jacobi || std::strcmp(env, "jacobi") == 0;
    // Production: all eigenvalues, then only the kept eigenvectors (SymEig::vectors).
    const bool ok = jacobi ? eigh_jacobi(sw.G.data(), d, w.data(), V.data()) : sw.eig.values(sw.G.data(), d, w.data());
    const int pp = std::min(n, d), NN = std::max(n, d);
    EOptShrinkResult es;
    if (ok) es = eoptshrink(w.data(), pp, NN);
    info.rank_raw = es.rank;
    if (!ok || es.degenerate) info.fallback = SealFallback::turbo_degenerate;
    // Keep the components with a valid (positive, finite) φ, largest φ first, up to the cap.
    for (int i = 0; i < es.rank; i++)
      if (es.phi[i] > 0 && w[i] > 0) comp.push_back(i);
    std::stable_sort(comp.begin(), comp.end(), [&](int a, int b) { return es.phi[a] > es.phi[b]; });
    if ((int)comp.size() > p.rank_cap) comp.resize(p.rank_cap);
    r = (int)comp.size();
    C.assign((size_t)n * r, 0.0);
    Bm.assign((size_t)r * d, 0.0);
    // The kept eigenvectors: column comp[c] of V (Jacobi, all of them) or column c (only those).
    if (!jacobi) sw.eig.vectors(comp.data(), r, V.data(), d);
    for (int c = 0; c < r; c++) {
      const int i = comp[c];
      const int col = jacobi ? i : c;
      const double sigma = std::sqrt(w[i]);
      const double g = p.shrink ? es.phi[i] / sigma : 1.0;
      // Sign convention: the basis row's largest-magnitude entry is positive.
      int jmax = 0;
      for (int j = 1; j < d; j++)
        if (std::fabs(V[(size_t)j * d + col]) > std::fabs(V[(size_t)jmax * d + col])) jmax = j;
      const double sgn = V[(size_t)jmax * d + col] < 0 ? -1.0 : 1.0;
      double* bm = &Bm[(size_t)c * d];
      for (int j = 0; j < d; j++) bm[j] = sgn * V[(size_t)j * d + col];
      for (int t = 0; t < n; t++) {
        const float* x = X + (size_t)t * d;
        C[(size_t)t * r + c] = dot4f(x, bm, d) * g;
      }
      info.sigma.push_back(sigma);
      info.phi.push_back(es.phi[i]);
      info.gains.push_back(g);
      info.lowrank_energy += w[i] / xnorm2;
    }
  }

  // ---- factor quantization (falls back to r = 0 if a scale overflows f16) ----
  std::vector<float>& Lq = sw.Lq;  // dequant(C) · dequant(Bm), as stored
  Lq.assign(nd, 0.0f);
  if (r > 0) {
    const int qmax = (1 << (p.factor_bits - 1)) - 1;
    std::vector<uint16_t> cs(r), bs(r);
    std::vector<int>& cq = sw.cq;  // r×n: coefficient codes of column c in row c
    std::vector<int>& bq = sw.bq;  // r×d
    cq.resize((size_t)r * n);
    bq.resize((size_t)r * d);
    bool ok = true;
    for (int c = 0; c < r && ok; c++) {
      ok = quantize_factor(&C[c], n, r, qmax, cs[c], &cq[(size_t)c * n]) &&
           quantize_factor(&Bm[(size_t)c * d], d, 1, qmax, bs[c], &bq[(size_t)c * d]);
    }
    if (!ok) {
      r = 0;
      info.sigma.clear();
      info.phi.clear();
      info.gains.clear();
      info.lowrank_energy = 0;
      info.fallback = SealFallback::turbo_degenerate;
    } else {
      out.rank = r;
      out.coef_scale = cs;
      out.basis_scale = bs;
      out.coef_codes.assign(packed_bytes((int64_t)n * r, p.factor_bits), 0);
      out.basis_codes.assign(packed_bytes((int64_t)r * d, p.factor_bits), 0);
      for (int c = 0; c < r; c++)
        for (int t = 0; t < n; t++)
          put_bits(out.coef_codes.data(), (int64_t)c * n + t, p.factor_bits, (uint32_t)(cq[(size_t)c * n + t] + qmax));
      for (int c = 0; c < r; c++)
        for (int j = 0; j < d; j++)
          put_bits(out.basis_codes.data(), (int64_t)c * d + j, p.factor_bits, (uint32_t)(bq[(size_t)c * d + j] + qmax));
      for (int c = 0; c < r; c++) out.gains.push_back(fp32_to_fp16((float)info.gains[c]));
      std::vector<float>& coef = sw.coef;
      std::vector<float>& basis = sw.basis;
      coef.resize((size_t)n * r);
      basis.resize((size_t)r * d);
      out.factors(coef.data(), basis.data());
      // Each entry summed over c in the same order as SealedBlock::dequantize, starting from
      // 0 (the stored form, bit for bit); the loop over j runs innermost and vectorises.
      for (int t = 0; t < n; t++) {
        float* lrow = Lq.data() + (size_t)t * d;
        for (int c = 0; c < r; c++) {
          const float a = coef[(size_t)t * r + c];
          const float* b = basis.data() + (size_t)c * d;
          for (int j = 0; j < d; j++) lrow[j] += a * b[j];
        }
      }
    }
  }
  info.rank = r;
  out.rank = r;

  // ---- stage 2: TurboQuant residual of R = X − L (closed loop) ----
  // The block error is measured on the stored form as it is built: X̂ = decode(residual) + L
  // is exactly what SealedBlock::dequantize returns (same operations in the same order).
  const TurboRowCodec codec(d, p.bits);
  const size_t cb = codec.code_bytes();
  out.codes.assign((size_t)n * cb, 0);
  out.norms.resize(n);
  out.norm_codes.clear();
  out.norm_shift = 0;
  std::vector<float>& R = sw.R;
  std::vector<float>& Rh = sw.Rh;
  R.resize(d);
  Rh.resize(d);
  double e2s[4] = {0, 0, 0, 0};  // partial sums of the squared error (fixed order)
  bool overflow = false;
  float max_norm = 0;
  for (int t = 0; t < n && !overflow; t++) {  // pass 1: codes and f16 norms
    const float* x = X + (size_t)t * d;
    const float* l = Lq.data() + (size_t)t * d;
    for (int j = 0; j < d; j++) R[j] = x[j] - l[j];
    out.norms[t] = codec.encode(R.data(), out.codes.data() + t * cb, p.norm_correction);
    const float nf = fp16_to_fp32(out.norms[t]);
    overflow = !std::isfinite(nf);
    max_norm = std::max(max_norm, nf);
  }
  if (overflow) {
    make_exact(X, n, d, out);
    info.fallback = SealFallback::exact_overflow;
    info.rank = 0;
    info.sigma.clear();
    info.phi.clear();
    info.gains.clear();
  } else if (p.norm_bits == 8 && log_norm_shift(max_norm, out.norm_shift)) {  // the norms as bytes
    out.norm_codes.resize(n);
    for (int t = 0; t < n; t++) out.norm_codes[t] = log_norm_encode(fp16_to_fp32(out.norms[t]), out.norm_shift);
    out.norms.clear();
  }
  for (int t = 0; t < n && !overflow; t++) {  // pass 2: the error of the stored form
    const float* x = X + (size_t)t * d;
    const float* l = Lq.data() + (size_t)t * d;
    codec.decode(out.codes.data() + t * cb, out.norm_f16(t), Rh.data());
    if (r > 0)
      for (int j = 0; j < d; j++) Rh[j] += l[j];
    for (int j = 0; j < d; j++) {
      const double diff = (double)x[j] - Rh[j];
      e2s[j & 3] += diff * diff;
    }
  }
  double e2 = (e2s[0] + e2s[1]) + (e2s[2] + e2s[3]);
  if (overflow) {  // the exact copy: measure it the plain way
    std::vector<float> xh(nd);
    out.dequantize(xh.data());
    e2 = 0;
    for (size_t i = 0; i < nd; i++) e2 += ((double)X[i] - xh[i]) * ((double)X[i] - xh[i]);
  }
  info.rel_err = xnorm2 > 0 ? std::sqrt(e2 / xnorm2) : 0;
}

}  // namespace eoq
