// TurboQuant reference: Lloyd–Max codebooks for the rotated-unit-vector coordinate law, the
// seeded rotations, bit packing and the row codec (kernels/turboquant.h).
#include "kernels/turboquant.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "base/error.h"
#include "base/fp16.h"

namespace eoq {

namespace {

constexpr double kPi = 3.14159265358979323846;

// n-point Gauss–Legendre nodes and weights on [-1, 1] (Newton on P_n from Chebyshev guesses).
void gauss_legendre(int n, std::vector<double>& x, std::vector<double>& w) {
  x.assign(n, 0);
  w.assign(n, 0);
  for (int i = 0; i < n; i++) {
    double z = std::cos(kPi * (i + 0.75) / (n + 0.5)), dp = 0;
    for (int it = 0; it < 100; it++) {
      double p0 = 1, p1 = z;  // P_0, P_1; recurrence up to P_n
      for (int k = 2; k <= n; k++) {
        const double p2 = ((2 * k - 1) * z * p1 - (k - 1) * p0) / k;
        p0 = p1;
        p1 = p2;
      }
      dp = n * (z * p1 - p0) / (z * z - 1);
      const double dz = p1 / dp;
      z -= dz;
      if (std::fabs(dz) < 1e-16) break;
    }
    x[i] = z;
    w[i] = 2 / ((1 - z * z) * dp * dp);
  }
}

// The coordinate law in the angle domain: x = sqrt(d) sin θ, θ in [0, π/2] for the positive
// half, has density ∝ cos^(d-2) θ (the Jacobian turns (1 - x²/d)^((d-3)/2) dx into it), which
// is smooth for every d >= 2. Mass(θ) = ∫_0^θ cos^(d-2) is tabulated on a fine grid and
// completed inside a panel with Gauss–Legendre; the first moment has a closed form:
// ∫ sqrt(d) sin θ cos^(d-2) θ dθ = -sqrt(d) cos^(d-1) θ / (d - 1).
struct AngleLaw {
  int d;
  double sd;
  static constexpr int K = 4096;  // grid panels over [0, π/2]
  double h;
  std::vector<double> cum;  // [K + 1]
  std::vector<double> gx, gw;

  explicit AngleLaw(int d_) : d(d_), sd(std::sqrt((double)d_)), h(kPi / 2 / K) {
    gauss_legendre(8, gx, gw);
    cum.assign(K + 1, 0);
    for (int k = 0; k < K; k++) cum[k + 1] = cum[k] + panel(k * h, (k + 1) * h);
  }
  double dens(double th) const {
    const double c = std::cos(th);
    return d == 2 ? 1.0 : (c <= 0 ? 0.0 : std::exp((d - 2) * std::log(c)));
  }
  double panel(double a, double b) const {
    double s = 0;
    const double m = 0.5 * (a + b), r = 0.5 * (b - a);
    for (size_t i = 0; i < gx.size(); i++) s += gw[i] * dens(m + r * gx[i]);
    return s * r;
  }
  double mass(double th) const {  // ∫_0^θ
    th = std::min(std::max(th, 0.0), kPi / 2);
    int k = (int)(th / h);
    if (k >= K) return cum[K];
    return cum[k] + panel(k * h, th);
  }
  double moment(double th) const {  // ∫_0^θ sqrt(d) sin cos^(d-2)
    const double c = std::cos(std::min(std::max(th, 0.0), kPi / 2));
    return sd * (1.0 - std::pow(std::max(c, 0.0), d - 1)) / (d - 1);
  }
  double angle(double x) const { return std::asin(std::min(std::max(x / sd, -1.0), 1.0)); }
};

LloydMaxCodebook build_codebook(int d, int bits) {
  const AngleLaw law(d);
  const int L = 1 << bits, m = L / 2;  // m positive centroids
  const double half = law.cum[AngleLaw::K];
  // Start from a uniform spread over ±3 (Lloyd converges from any ordered start).
  std::vector<double> c(m), t(m + 1);
  for (int i = 0; i < m; i++) c[i] = std::min(3.0 * (i + 0.5) / m, law.sd * (i + 0.5) / m);
  std::vector<double> mass(m);
  for (int it = 0; it < 200000; it++) {
    t[0] = 0;
    for (int i = 1; i < m; i++) t[i] = 0.5 * (c[i - 1] + c[i]);
    t[m] = law.sd;
    double delta = 0;
    double m_prev = 0, mo_prev = 0;
    for (int i = 0; i < m; i++) {
      const double th = law.angle(t[i + 1]);
      const double ms = law.mass(th), mo = law.moment(th);
      mass[i] = ms - m_prev;
      const double nc = mass[i] > 0 ? (mo - mo_prev) / mass[i] : 0.5 * (t[i] + t[i + 1]);
      delta = std::max(delta, std::fabs(nc - c[i]));
      c[i] = nc;
      m_prev = ms;
      mo_prev = mo;
    }
    if (delta < 1e-13) break;
  }
  LloydMaxCodebook cb;
  cb.d = d;
  cb.bits = bits;
  cb.centroids.resize(L);
  for (int i = 0; i < m; i++) {
    cb.centroids[m + i] = (float)c[i];
    cb.centroids[m - 1 - i] = (float)-c[i];
  }
  // MSE = E[x²] - Σ mass_i c_i² (centroid condition), E[x²] = 1, both halves.
  double s = 0;
  for (int i = 0; i < m; i++) s += mass[i] / half * c[i] * c[i];
  cb.mse = 1.0 - s;
  cb.thresholds.resize(L - 1);
  for (int i = 0; i + 1 < L; i++) cb.thresholds[i] = 0.5f * (cb.centroids[i] + cb.centroids[i + 1]);
  return cb;
}

void fwht(float* x, int n) {  // unnormalised Walsh–Hadamard, in place
  for (int len = 1; len < n; len <<= 1)
    for (int i = 0; i < n; i += len << 1)
      for (int j = i; j < i + len; j++) {
        const float a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
}

}  // namespace

int LloydMaxCodebook::encode(float x) const {
  if (x != x) return (int)centroids.size() / 2;
  // upper_bound: the number of thresholds <= x; counted directly for the small tables
  if (thresholds.size() <= 15) {
    int k = 0;
    for (float t : thresholds) k += t <= x;
    return k;
  }
  return (int)(std::upper_bound(thresholds.begin(), thresholds.end(), x) - thresholds.begin());
}

const LloydMaxCodebook& lloyd_max_codebook(int d, int bits) {
  if (d < 2 || bits < 1 || bits > 8)
    fail(ErrorCode::invalid_arg, "Lloyd-Max codebook: need d >= 2 and bits in 1..8 (got d=" + std::to_string(d) +
                                     ", bits=" + std::to_string(bits) + ")");
  static std::mutex mu;
  static std::map<std::pair<int, int>, std::unique_ptr<LloydMaxCodebook>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{d, bits}];
  if (!slot) slot = std::make_unique<LloydMaxCodebook>(build_codebook(d, bits));
  return *slot;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t s = seed;
  uint64_t h = splitmix64(s);
  s = h ^ (a * 0xd1b54a32d192ed03ull);
  h = splitmix64(s);
  s = h ^ (b * 0x8cb92ba72f3d8dd7ull);
  return splitmix64(s);
}

Rotation::Rotation(int d, uint64_t seed) : d_(d) {
  if (d < 1) fail(ErrorCode::invalid_arg, "rotation: dimension must be positive");
  hadamard_ = (d & (d - 1)) == 0;
  uint64_t st = seed;
  if (hadamard_) {
    s1_.resize(d);
    s2_.resize(d);
    for (int i = 0; i < d; i++) s1_[i] = (splitmix64(st) >> 63) ? -1.0f : 1.0f;
    for (int i = 0; i < d; i++) s2_[i] = (splitmix64(st) >> 63) ? -1.0f : 1.0f;
    return;
  }
  // Gaussian d×d (Box–Muller on 53-bit uniforms), then modified Gram–Schmidt on its columns.
  std::vector<double> a((size_t)d * d);  // column-major: column j at a[j*d ..]
  for (size_t i = 0; i < a.size(); i += 2) {
    const double u1 = ((splitmix64(st) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    const double u2 = ((splitmix64(st) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    const double r = std::sqrt(-2 * std::log(u1));
    a[i] = r * std::cos(2 * kPi * u2);
    if (i + 1 < a.size()) a[i + 1] = r * std::sin(2 * kPi * u2);
  }
  for (int j = 0; j < d; j++) {
    double* cj = &a[(size_t)j * d];
    for (int pass = 0; pass < 2; pass++)  // re-orthogonalise once for accuracy
      for (int i = 0; i < j; i++) {
        const double* ci = &a[(size_t)i * d];
        double p = 0;
        for (int k = 0; k < d; k++) p += ci[k] * cj[k];
        for (int k = 0; k < d; k++) cj[k] -= p * ci[k];
      }
    double n = 0;
    for (int k = 0; k < d; k++) n += cj[k] * cj[k];
    n = std::sqrt(n);
    for (int k = 0; k < d; k++) cj[k] /= n;  // R_jj = n > 0: the Haar sign convention
  }
  q_.resize((size_t)d * d);
  for (int i = 0; i < d; i++)
    for (int j = 0; j < d; j++) q_[(size_t)i * d + j] = (float)a[(size_t)j * d + i];
}

void Rotation::apply(const float* x, float* y) const {
  thread_local std::vector<float> t;
  t.resize(d_);
  if (hadamard_) {
    for (int i = 0; i < d_; i++) t[i] = s1_[i] * x[i];
    fwht(t.data(), d_);
    const float s = 1.0f / std::sqrt((float)d_);
    for (int i = 0; i < d_; i++) y[i] = s2_[i] * t[i] * s;
    return;
  }
  for (int i = 0; i < d_; i++) {
    double s = 0;
    for (int j = 0; j < d_; j++) s += (double)q_[(size_t)i * d_ + j] * x[j];
    t[i] = (float)s;
  }
  std::copy(t.begin(), t.end(), y);
}

void Rotation::apply_t(const float* y, float* x) const {
  thread_local std::vector<float> t;
  t.resize(d_);
  if (hadamard_) {
    for (int i = 0; i < d_; i++) t[i] = s2_[i] * y[i];
    fwht(t.data(), d_);
    const float s = 1.0f / std::sqrt((float)d_);
    for (int i = 0; i < d_; i++) x[i] = s1_[i] * t[i] * s;
    return;
  }
  std::vector<double> acc(d_, 0.0);
  for (int i = 0; i < d_; i++)
    for (int j = 0; j < d_; j++) acc[j] += (double)q_[(size_t)i * d_ + j] * y[i];
  for (int j = 0; j < d_; j++) x[j] = (float)acc[j];
}

std::vector<float> Rotation::matrix() const {
  std::vector<float> m((size_t)d_ * d_), e(d_), col(d_);
  for (int j = 0; j < d_; j++) {
    std::fill(e.begin(), e.end(), 0.0f);
    e[j] = 1;
    apply(e.data(), col.data());
    for (int i = 0; i < d_; i++) m[(size_t)i * d_ + j] = col[i];
  }
  return m;
}

void unpack_bits(const uint8_t* buf, int64_t count, int bits, uint8_t* out) {
  switch (bits) {
    case 8:
      std::copy(buf, buf + count, out);
      return;
    case 4:
      for (int64_t i = 0; i < count; i++) out[i] = (buf[i >> 1] >> ((i & 1) * 4)) & 0xf;
      return;
    case 2:
      for (int64_t i = 0; i < count; i++) out[i] = (buf[i >> 2] >> ((i & 3) * 2)) & 0x3;
      return;
    case 1:
      for (int64_t i = 0; i < count; i++) out[i] = (buf[i >> 3] >> (i & 7)) & 0x1;
      return;
    default:
      for (int64_t i = 0; i < count; i++) out[i] = (uint8_t)get_bits(buf, i, bits);
  }
}

TurboRowCodec::TurboRowCodec(int d_, int bits_) : d(d_), bits(bits_), cb(&lloyd_max_codebook(d_, bits_)) {}

uint16_t TurboRowCodec::encode(const float* x, uint8_t* codes, bool norm_correction) const {
  std::fill(codes, codes + code_bytes(), (uint8_t)0);
  double n2 = 0;
  for (int j = 0; j < d; j++) n2 += (double)x[j] * x[j];
  const double rho = std::sqrt(n2);
  if (!(rho > 0) || !std::isfinite(rho)) return 0;  // zero row: norm 0 decodes to zeros
  const double sc = std::sqrt((double)d) / rho;
  double c2 = 0;
  for (int j = 0; j < d; j++) {
    const int k = cb->encode((float)(x[j] * sc));
    put_bits(codes, j, bits, (uint32_t)k);
    const double cj = cb->centroids[k];
    c2 += cj * cj;
  }
  double stored = rho;
  if (norm_correction && c2 > 0) stored = rho / std::sqrt(c2 / d);  // ‖ĉ‖ with ĉ_j = c_j / sqrt(d)
  return fp32_to_fp16((float)stored);
}

void TurboRowCodec::decode(const uint8_t* codes, uint16_t norm_f16, float* out) const {
  const float s = fp16_to_fp32(norm_f16) / std::sqrt((float)d);
  for (int j = 0; j < d; j++) out[j] = s * cb->centroids[get_bits(codes, j, bits)];
}

const uint16_t* log_norm_mantissa() {
  static const std::array<uint16_t, 32> t = [] {
    std::array<uint16_t, 32> m{};
    for (int k = 0; k < 32; k++) m[k] = fp32_to_fp16((float)std::exp2(-k / 32.0));
    return m;
  }();
  return t.data();
}

bool log_norm_shift(float max_norm, int& shift) {
  if (!(max_norm <= std::ldexp(1.0f, kLogNormMaxShift))) return false;  // also NaN
  int e = kLogNormMinShift;
  while (std::ldexp(1.0f, e) < max_norm) e++;
  shift = e;
  return true;
}

uint8_t log_norm_encode(float x, int shift) {
  const double x2 = (double)x * x;
  auto v = [&](int c) { return (double)fp16_to_fp32(log_norm_f16((uint8_t)c, shift)); };
  if (4 * x2 < v(254) * v(254)) return kLogNormZero;
  // Values fall with c: the first c whose split point with c + 1 lies at or below x.
  int lo = 0, hi = 254;  // answer in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (x2 >= v(mid) * v(mid + 1)) hi = mid;
    else lo = mid + 1;
  }
  return (uint8_t)lo;
}

}  // namespace eoq
