// Jacobi eigensolver, eOptShrink and block sealing (engine/eoptshrink.h).
#include "engine/eoptshrink.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/error.h"
#include "kernels/fp16.h"
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
  return kHeaderBytes + coef_codes.size() + basis_codes.size() +
         2 * (coef_scale.size() + basis_scale.size() + gains.size() + norms.size() + exact_f16.size()) + codes.size();
}

void SealedBlock::factors(float* coef, float* basis) const {
  const int qmax = (1 << (factor_bits - 1)) - 1;
  thread_local std::vector<uint8_t> q;
  q.resize((size_t)n * rank + (size_t)rank * d);
  unpack_bits(coef_codes.data(), (int64_t)n * rank, factor_bits, q.data());
  unpack_bits(basis_codes.data(), (int64_t)rank * d, factor_bits, q.data() + (size_t)n * rank);
  for (int i = 0; i < rank; i++) {
    const float cs = fp16_to_fp32(coef_scale[i]);
    for (int t = 0; t < n; t++) coef[(size_t)t * rank + i] = cs * (float)((int)q[(size_t)t * rank + i] - qmax);
    const float bs = fp16_to_fp32(basis_scale[i]);
    const uint8_t* qb = q.data() + (size_t)n * rank + (size_t)i * d;
    for (int j = 0; j < d; j++) basis[(size_t)i * d + j] = bs * (float)((int)qb[j] - qmax);
  }
}

void SealedBlock::dequantize(float* out) const {
  if (kind == exact) {
    for (size_t i = 0; i < (size_t)n * d; i++) out[i] = fp16_to_fp32(exact_f16[i]);
    return;
  }
  const TurboRowCodec codec(d, bits);
  const size_t cb = code_bytes();
  for (int t = 0; t < n; t++) codec.decode(codes.data() + t * cb, norms[t], out + (size_t)t * d);
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
  out.exact_f16.resize((size_t)n * d);
  for (size_t i = 0; i < (size_t)n * d; i++) out.exact_f16[i] = clamp_f16(X[i]);
}

// Symmetric factor_bits quantizer with an f16 scale: codes in [-qmax, qmax], scale = amax/qmax
// rounded to f16 (the codes are chosen against the rounded scale). Returns false if the scale
// overflows f16.
bool quantize_factor(const double* x, int count, int stride, int qmax, uint16_t& scale16, std::vector<int>& q) {
  double amax = 0;
  for (int i = 0; i < count; i++) amax = std::max(amax, std::fabs(x[(size_t)i * stride]));
  scale16 = fp32_to_fp16((float)(amax / qmax));
  const float s = fp16_to_fp32(scale16);
  q.assign(count, 0);
  if (!std::isfinite(s)) return false;
  if (s == 0) return true;
  for (int i = 0; i < count; i++) {
    const long v = std::lround(x[(size_t)i * stride] / s);
    q[i] = (int)std::min<long>(std::max<long>(v, -qmax), qmax);
  }
  return true;
}

}  // namespace

void seal_block(const float* X, int n, int d, const SealParams& p, SealedBlock& out, SealInfo& info) {
  if (n <= 0 || d <= 0) fail(ErrorCode::invalid_arg, "seal_block: empty block");
  if (p.bits < 1 || p.bits > 8) fail(ErrorCode::invalid_arg, "seal_block: residual bits must be in 1..8");
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
  double xnorm2 = 0;
  bool finite = true;
  for (size_t i = 0; i < nd; i++) {
    if (!std::isfinite(X[i])) finite = false;
    else xnorm2 += (double)X[i] * X[i];
  }
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
  int r = 0;
  std::vector<double> C, Bm;  // n×r row-major, r×d row-major (before quantization)
  std::vector<int> comp;      // kept eigen-indices
  std::vector<double> w, V;
  if (xnorm2 == 0) {
    info.fallback = SealFallback::turbo_zero;
  } else if (p.rank_cap > 0) {
    std::vector<double> G((size_t)d * d, 0.0);
    for (int t = 0; t < n; t++) {
      const float* x = X + (size_t)t * d;
      for (int i = 0; i < d; i++) {
        const double xi = x[i];
        double* g = &G[(size_t)i * d];
        for (int j = 0; j <= i; j++) g[j] += xi * x[j];
      }
    }
    for (int i = 0; i < d; i++)
      for (int j = i + 1; j < d; j++) G[(size_t)i * d + j] = G[(size_t)j * d + i];
    w.resize(d);
    V.resize((size_t)d * d);
    const bool ok = eigh_jacobi(G.data(), d, w.data(), V.data());
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
    for (int c = 0; c < r; c++) {
      const int i = comp[c];
      const double sigma = std::sqrt(w[i]);
      const double g = p.shrink ? es.phi[i] / sigma : 1.0;
      // Sign convention: the basis row's largest-magnitude entry is positive.
      int jmax = 0;
      for (int j = 1; j < d; j++)
        if (std::fabs(V[(size_t)j * d + i]) > std::fabs(V[(size_t)jmax * d + i])) jmax = j;
      const double sgn = V[(size_t)jmax * d + i] < 0 ? -1.0 : 1.0;
      for (int j = 0; j < d; j++) Bm[(size_t)c * d + j] = sgn * V[(size_t)j * d + i];
      for (int t = 0; t < n; t++) {
        const float* x = X + (size_t)t * d;
        double s = 0;
        for (int j = 0; j < d; j++) s += x[j] * Bm[(size_t)c * d + j];
        C[(size_t)t * r + c] = s * g;
      }
      info.sigma.push_back(sigma);
      info.phi.push_back(es.phi[i]);
      info.gains.push_back(g);
      info.lowrank_energy += w[i] / xnorm2;
    }
  }

  // ---- factor quantization (falls back to r = 0 if a scale overflows f16) ----
  std::vector<float> Lq(nd, 0.0f);  // dequant(C) · dequant(Bm), as stored
  if (r > 0) {
    const int qmax = (1 << (p.factor_bits - 1)) - 1;
    std::vector<uint16_t> cs(r), bs(r);
    std::vector<std::vector<int>> cq(r), bq(r);
    bool ok = true;
    for (int c = 0; c < r && ok; c++) {
      ok = quantize_factor(&C[c], n, r, qmax, cs[c], cq[c]) && quantize_factor(&Bm[(size_t)c * d], d, 1, qmax, bs[c], bq[c]);
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
      for (int t = 0; t < n; t++)
        for (int c = 0; c < r; c++) put_bits(out.coef_codes.data(), (int64_t)t * r + c, p.factor_bits, (uint32_t)(cq[c][t] + qmax));
      for (int c = 0; c < r; c++)
        for (int j = 0; j < d; j++) put_bits(out.basis_codes.data(), (int64_t)c * d + j, p.factor_bits, (uint32_t)(bq[c][j] + qmax));
      for (int c = 0; c < r; c++) out.gains.push_back(fp32_to_fp16((float)info.gains[c]));
      std::vector<float> coef((size_t)n * r), basis((size_t)r * d);
      out.factors(coef.data(), basis.data());
      for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++) {
          float s = 0;
          for (int c = 0; c < r; c++) s += coef[(size_t)t * r + c] * basis[(size_t)c * d + j];
          Lq[(size_t)t * d + j] = s;
        }
    }
  }
  info.rank = r;
  out.rank = r;

  // ---- stage 2: TurboQuant residual of R = X − L (closed loop) ----
  const TurboRowCodec codec(d, p.bits);
  const size_t cb = codec.code_bytes();
  out.codes.assign((size_t)n * cb, 0);
  out.norms.resize(n);
  std::vector<float> R(d);
  for (int t = 0; t < n; t++) {
    for (int j = 0; j < d; j++) R[j] = X[(size_t)t * d + j] - Lq[(size_t)t * d + j];
    out.norms[t] = codec.encode(R.data(), out.codes.data() + t * cb, p.norm_correction);
    if (!std::isfinite(fp16_to_fp32(out.norms[t]))) {
      make_exact(X, n, d, out);
      info.fallback = SealFallback::exact_overflow;
      info.rank = 0;
      info.sigma.clear();
      info.phi.clear();
      info.gains.clear();
      break;
    }
  }

  // Block error, measured on the stored form.
  std::vector<float> xh(nd);
  out.dequantize(xh.data());
  double e2 = 0;
  for (size_t i = 0; i < nd; i++) e2 += ((double)X[i] - xh[i]) * ((double)X[i] - xh[i]);
  info.rel_err = xnorm2 > 0 ? std::sqrt(e2 / xnorm2) : 0;
}

}  // namespace eoq
