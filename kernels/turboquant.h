// TurboQuant (MSE variant, no QJL stage): a fixed random rotation per head plus a b-bit
// Lloyd–Max scalar codebook for each rotated coordinate. See ../shared/spec/kv-compression.md
// section 4. Scalar reference; the compressed KV cache and the sealing code use it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace eoq {

// The Lloyd–Max codebook of one coordinate of a uniformly random unit vector in R^d, scaled
// by sqrt(d): the coordinate t has (t + 1)/2 ~ Beta((d-1)/2, (d-1)/2), so x = t sqrt(d) has
// density ∝ (1 - x²/d)^((d-3)/2) on [-sqrt(d), sqrt(d)] (close to N(0,1) for large d).
// 2^bits centroids, ascending and symmetric (centroid[L-1-i] = -centroid[i]); thresholds are
// the midpoints between neighbours (2^bits - 1 of them). Computed once per (d, bits) by Lloyd
// iterations with Gauss–Legendre integration and cached for the life of the process
// (thread-safe; the returned reference stays valid). d >= 2, bits in 1..8.
struct LloydMaxCodebook {
  int d = 0, bits = 0;
  std::vector<float> centroids;   // [2^bits], units of 1/sqrt(d) (multiply by 1/sqrt(d) to apply)
  std::vector<float> thresholds;  // [2^bits - 1], midpoints
  double mse = 0;                 // E[(x - Q(x))²] per scaled coordinate (≈ ‖u − û‖² for a unit u)
  // Index of the nearest centroid of a scaled coordinate x (NaN maps to the middle).
  int encode(float x) const;
};
const LloydMaxCodebook& lloyd_max_codebook(int d, int bits);

// A random orthogonal d×d rotation Π, fixed by a seed.
//  * d a power of two: randomized Hadamard Π x = D2 H D1 x / sqrt(d), H the ±1 Walsh–Hadamard
//    matrix (H² = d I), D1, D2 diagonal ±1 drawn from the seed. O(d log d).
//  * otherwise: a dense Haar-random orthogonal matrix, the Q of a modified Gram–Schmidt QR of a
//    seeded Gaussian matrix (R's diagonal positive), computed in double.
class Rotation {
 public:
  Rotation() = default;
  Rotation(int d, uint64_t seed);
  int dim() const { return d_; }
  bool hadamard() const { return hadamard_; }
  void apply(const float* x, float* y) const;    // y = Π x   (x, y: d floats; may alias)
  void apply_t(const float* y, float* x) const;  // x = Πᵀ y  (the inverse)
  std::vector<float> matrix() const;             // Π as d×d row-major
 private:
  int d_ = 0;
  bool hadamard_ = false;
  std::vector<float> s1_, s2_;  // D1, D2 diagonals (±1), Hadamard case
  std::vector<float> q_;        // d×d row-major, dense case
};

// Deterministic 64-bit mixing (splitmix64): derives per-(layer, head) seeds and drives the
// rotation's random draws, so a cache is reproducible from KVCacheParams::seed alone.
uint64_t splitmix64(uint64_t& state);
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b);

// Packed little-endian bit fields: value i occupies bits [i*bits, (i+1)*bits) of the stream
// (bit 0 = least significant bit of byte 0). put_bits ORs into a zeroed buffer.
inline size_t packed_bytes(int64_t count, int bits) { return (size_t)((count * bits + 7) / 8); }
// bits in 1..24; a field touches at most 4 bytes and nothing past its last bit.
inline void put_bits(uint8_t* buf, int64_t i, int bits, uint32_t v) {
  const int64_t bit = i * bits;
  uint32_t w = (v & ((1u << bits) - 1)) << (bit & 7);
  for (uint8_t* p = buf + (bit >> 3); w; p++, w >>= 8) *p |= (uint8_t)w;
}
inline uint32_t get_bits(const uint8_t* buf, int64_t i, int bits) {
  const int64_t bit = i * bits;
  const int sh = (int)(bit & 7), nbytes = (sh + bits + 7) / 8;
  const uint8_t* p = buf + (bit >> 3);
  uint32_t w = 0;
  for (int k = 0; k < nbytes; k++) w |= (uint32_t)p[k] << (8 * k);
  return (w >> sh) & ((1u << bits) - 1);
}
// Unpacks count b-bit fields starting at field 0 into out[count] (fast paths for b = 1, 2, 4, 8).
void unpack_bits(const uint8_t* buf, int64_t count, int bits, uint8_t* out);

// One TurboQuant row codec for a fixed (d, bits). A row x (already in the rotated basis) is
// stored as packed codes (bits*d bits, code_bytes() bytes) and an f16 norm:
//   ρ = ‖x‖, code_j = nearest centroid of x_j / ρ · sqrt(d),
//   stored norm = ρ, or ρ / ‖ĉ‖ with ĉ_j = c[code_j]/sqrt(d) (norm correction: the decoded row
//   keeps the exact norm), rounded to f16.
//   decode: x̂_j = norm · c[code_j] / sqrt(d).
// A zero row stores norm 0 (decodes to zeros). Non-finite input is the caller's to reject.
struct TurboRowCodec {
  TurboRowCodec() = default;
  TurboRowCodec(int d, int bits);
  int d = 0, bits = 0;
  const LloydMaxCodebook* cb = nullptr;
  size_t code_bytes() const { return packed_bytes(d, bits); }
  // codes: code_bytes() bytes, overwritten. Returns the stored norm as f16 bits.
  uint16_t encode(const float* x, uint8_t* codes, bool norm_correction) const;
  void decode(const uint8_t* codes, uint16_t norm_f16, float* out) const;
};

// 8-bit log-domain row norms (the norm_bits = 8 form of a sealed block's norms): one exponent
// `shift` per block and a byte per row. Code c in 0..254 stands for 2^(shift − c/32) rounded to
// f16, built from its bits without arithmetic: log_norm_mantissa()[c & 31] (the f16 bits of
// 2^(−(c & 31)/32)) plus (shift − (c >> 5)) in the exponent field; code 255 stands for 0.
// Eight octaves below 2^shift at steps of 2^(1/32) (≤ 1.1% relative error); shift in
// [kLogNormMinShift, kLogNormMaxShift] keeps every code a normal f16. Decoding is exact on every
// ISA (kernels.h decode_log_norms).
constexpr int kLogNormZero = 255, kLogNormMinShift = -6, kLogNormMaxShift = 15;
const uint16_t* log_norm_mantissa();  // [32]
inline uint16_t log_norm_f16(uint8_t c, int shift) {
  if (c == kLogNormZero) return 0;
  return (uint16_t)(log_norm_mantissa()[c & 31] + (shift - (c >> 5)) * 1024);
}
// The smallest shift with 2^shift >= max_norm (at least kLogNormMinShift); false when max_norm
// exceeds 2^kLogNormMaxShift or is not finite (the block then keeps f16 norms).
bool log_norm_shift(float max_norm, int& shift);
// The code whose value is nearest to x (>= 0, <= 2^shift) in the log domain: codes c and c + 1
// split at sqrt(v_c · v_{c+1}) (compared as x² against the exact product in double, so the
// choice needs no transcendental function); 255 (zero) when x is below half the smallest value.
uint8_t log_norm_encode(float x, int shift);

}  // namespace eoq
