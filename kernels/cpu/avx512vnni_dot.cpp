// The weight x activation products of kernels/cpu/avx2_dot.cpp compiled a second time for CPUs
// with AVX512-VNNI (and AVX512VL): the integer sum of each group of four u8·s8 products of the
// legacy formats (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) is one vpdpbusd instead of maddubs + madd. The lane
// sums are the same integers and every float operation is the same, so the results are the
// AVX2 table's bits (tests/test_quant_dot.py checks both against the scalar reference). The
// K-quants have kernels of their own below (Q4_K/Q5_K/Q6_K: the AVX2 table's bits; Q2_K/Q3_K:
// the scalar reference's, which the AVX2 table uses), for decode and prompt batches. The
// table is the AVX2 one with vec_dot swapped, chosen when CPUID reports VNNI; where it also
// reports VBMI, the attention kernels over packed codes are kernels/cpu/avx512_codes.cpp's.
#if defined(__x86_64__) || defined(_M_X64)
#define EOQ_DOT_VNNI 1
#define quantize_act_avx2 quantize_act_avx512vnni
#define vec_dot_avx2 vec_dot_avx512vnni
#include "kernels/cpu/avx2_dot.cpp"
#include "kernels/kernels.h"
#undef quantize_act_avx2
#undef vec_dot_avx2

namespace eoq {

void vec_dot_avx2(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy);
// kernels/cpu/avx512_codes.cpp (needs AVX512-VBMI as well)
void scores_codes_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* q, int nq, float* out);
void scores_codes_q8_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                            const uint16_t* norms, float scale, const float* q, int nq, float* out);
void scores_f32t_chain_avx512(const float* kt, int d, int m, const float* q, float* out);
void values_f32_chain_avx512(const float* v, int m, int d, const float* w, float* acc);
void values_codes_avx512(const uint8_t* codes, int64_t m, int d, int bits, const float* centroids,
                         const uint16_t* norms, float scale, const float* w, int nq, float* acc);
void decode_codes_avx512(const uint8_t* codes, int64_t n, int bits, const float* table, float* out);
void decode_log_norms_avx512(const uint8_t* codes, int64_t m, int shift, uint16_t* out);
float softmax_exp_avx512(float* x, int64_t n, float mx);

// GCC 12's AVX-512 headers initialise the undefined upper parts of a broadcast or widening with
// `__Y = __Y`, which -Wuninitialized reports at every use; the warnings are about the headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {

// ---- four weight rows per 512-bit register ----
//
// The AVX2 tile spends most of its time on per-block bookkeeping (one broadcast, shift, convert
// and scale per row and block); with one token (decode) the weights arrive faster than it
// consumes them. Here the 16 quant bytes of a block of rows r..r+3 fill one zmm (128-bit lane i
// = row i): `lo` holds values 0..15 of each row, `hi` values 16..31, unpacked once per block for
// up to kNT tokens. Per token, one vpdpbusd against the activation's first (second) 16 bytes,
// broadcast to the four lanes, gives each row's int32 lanes 0-3 (4-7) of the AVX2 tile's 8-lane
// sum; acc_lo / acc_hi then take the same fused multiply-add with the same d_w·d_a, lane for
// lane. The AVX2 tail sums the 8 lanes as hi + lo, then lanes (0+2, 1+3), then those two; so
// does this one (IEEE addition commutes). The minimum term Σ_b m_w s_a is the same fma chain per
// row, four rows in one vector. So every result has the AVX2 table's bits (tests/test_quant_dot.py
// compares them), i.e. ggml's.

// 16 bytes at p0..p3 as the four 128-bit lanes of one register
inline __m512i load4x16(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2, const uint8_t* p3) {
  const __m256i a = _mm256_inserti128_si256(_mm256_castsi128_si256(load16(p0)), load16(p1), 1);
  const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(load16(p2)), load16(p3), 1);
  return _mm512_inserti64x4(_mm512_zextsi256_si512(a), b, 1);
}

// The integer part of a block: Σ q_w a per group of four quants (vpdpbusd: u8 weights times s8
// activations), less the format's offset. Q4_0's quants are stored as u = q + 8; Q8_0's signed
// ones are turned into u = q + 128 (XOR 0x80) when loaded. Either way Σ q a = Σ u a - offset Σ a,
// and the activation side's -offset Σ a (eight int32 lanes per block: lanes 0-3 over quants
// 0..15, 4-7 over 16..31) is computed once per call and token instead of once per four rows:
// vpdpbusd then adds Σ u a to it. These are the exact integers the AVX2 tile's lanes hold (for
// Q8_0 the tile's |w|, a·sign(w) products are exact for every activation the quantizers make,
// -127..127).
template <class W>
constexpr int act_offset() {
  return W::kOffset ? W::kOffset : (W::kSigned ? 128 : 0);
}

// Block b of token t of the activations: its 32 quants, float d, (Q8_1) s and the offset lanes.
// One activation row (decode: its quants read in place, the rest prepared by prepare_row), or a
// token group repacked by repack_tokens with its offsets from prepare_tokens (prompt batches).
template <class W>
struct OneRow {
  const uint8_t* a;
  const float *ad, *as;
  const int32_t* ao;
  const uint8_t* qs(int64_t b, int) const { return a + b * W::kActBytes + W::kActQs; }
  float d(int64_t b, int) const { return ad[b]; }
  float s(int64_t b, int) const { return as[b]; }
  const int32_t* off(int64_t b, int) const { return ao + b * 8; }
};
struct Repacked {
  const int8_t* aq;
  const float *ad, *as;
  const int32_t* ao;  // [(b*kNT + t)*8 ..]: the offset lanes (formats with an offset only)
  int64_t nb;
  const int8_t* qs(int64_t b, int t) const { return aq + (b * kNT + t) * QK; }
  float d(int64_t b, int t) const { return ad[b * kNT + t]; }
  float s(int64_t b, int t) const { return as[t * nb + b]; }
  const int32_t* off(int64_t b, int t) const { return ao + (b * kNT + t) * 8; }
};

// -offset · (a_4i + .. + a_4i+3) for i < 8 over the 32 quants at q, into out[0..8)
template <class W>
inline void offset_lanes(const void* q, int32_t* out) {
  const __m256i sum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)act_offset<W>()), load32(q));
  _mm256_storeu_si256((__m256i*)out, _mm256_sub_epi32(_mm256_setzero_si256(), sum));
}

// One activation row's per-block d, (Q8_1) s and offset lanes, for OneRow.
template <class W>
void prepare_row(const uint8_t* a, int64_t nb, float* ad, float* as, int32_t* ao) {
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t* blk = a + b * W::kActBytes;
    ad[b] = h2f(blk);
    if (W::kMin) as[b] = h2f(blk + 2);
    if (act_offset<W>()) offset_lanes<W>(blk + W::kActQs, ao + b * 8);
  }
}

// The offset lanes of a token group already in the scratch's layout (repack_tokens).
template <class W>
void prepare_tokens(const Scratch& s, int ntg, int64_t nb, int32_t* ao) {
  for (int64_t b = 0; b < nb; b++)
    for (int t = 0; t < ntg; t++) offset_lanes<W>(&s.aq[(size_t)((b * kNT + t) * QK)], ao + (b * kNT + t) * 8);
}

// y[t*ldy + i] for rows w + i·ws (i < 4) and T tokens of the activations act.
template <class W, int T, class Act>
EOQ_NOINLINE void dot_rows4(const uint8_t* w, size_t ws, int64_t nb, Act act, float* y, int64_t ldy) {
  const uint8_t* p[4] = {w, w + ws, w + 2 * ws, w + 3 * ws};
  __m512 acc_lo[T], acc_hi[T];
  __m256 mins[T];  // odd lanes: row i's Σ_b m s in lane 2i + 1
  EOQ_UNROLL
  for (int t = 0; t < T; t++) {
    acc_lo[t] = acc_hi[t] = _mm512_setzero_ps();
    mins[t] = _mm256_setzero_ps();
  }
  const __m512i nib = _mm512_set1_epi8(0x0f);
  // row i's d_w (even lane 2i of the converted pairs) to lanes 4i..4i+3, times d_a per token
  const __m512i didx = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
  for (int64_t b = 0; b < nb; b++) {
    const size_t o = (size_t)b * W::kBytes;
    __m512i lo, hi;
    if (W::kSigned) {  // q + 128 as unsigned bytes
      const __m512i flip = _mm512_set1_epi8((char)0x80);
      lo = _mm512_xor_si512(flip, load4x16(p[0] + o + W::kQs, p[1] + o + W::kQs, p[2] + o + W::kQs, p[3] + o + W::kQs));
      hi = _mm512_xor_si512(
          flip, load4x16(p[0] + o + W::kQs + 16, p[1] + o + W::kQs + 16, p[2] + o + W::kQs + 16, p[3] + o + W::kQs + 16));
    } else {
      const __m512i q = load4x16(p[0] + o + W::kQs, p[1] + o + W::kQs, p[2] + o + W::kQs, p[3] + o + W::kQs);
      lo = _mm512_and_si512(q, nib);
      hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), nib);
    }
    // the rows' (d, m) or (d, next bytes) as f16 pairs -> [d0, m0, d1, m1, d2, m2, d3, m3]
    const __m256 dm = _mm256_cvtph_ps(_mm_setr_epi32((int)rd32(p[0] + o), (int)rd32(p[1] + o),
                                                     (int)rd32(p[2] + o), (int)rd32(p[3] + o)));
    const __m512 dw = _mm512_permutexvar_ps(didx, _mm512_zextps256_ps512(dm));  // d_w of row i in lanes 4i..
    EOQ_UNROLL
    for (int t = 0; t < T; t++) {
      const __m512i alo = _mm512_broadcast_i32x4(load16(act.qs(b, t)));
      const __m512i ahi = _mm512_broadcast_i32x4(load16(act.qs(b, t) + 16));
      __m512i ilo = _mm512_setzero_si512(), ihi = ilo;
      if (act_offset<W>()) {  // the offset lanes, to which vpdpbusd adds Σ u a
        ilo = _mm512_broadcast_i32x4(load16(act.off(b, t)));
        ihi = _mm512_broadcast_i32x4(load16(act.off(b, t) + 4));
      }
      ilo = _mm512_dpbusd_epi32(ilo, lo, alo);
      ihi = _mm512_dpbusd_epi32(ihi, hi, ahi);
      // d_w·d_a per lane: the same IEEE product as the AVX2 tile's, whichever comes first
      const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(act.d(b, t)));
      acc_lo[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ilo), sc, acc_lo[t]);
      acc_hi[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ihi), sc, acc_hi[t]);
      if (W::kMin) mins[t] = _mm256_fmadd_ps(dm, _mm256_set1_ps(act.s(b, t)), mins[t]);  // m_w · s_a
    }
  }
  EOQ_UNROLL
  for (int t = 0; t < T; t++) {
    // per row (128-bit lane): hi + lo, then lanes 0+2 and 1+3, then those two
    __m512 s = _mm512_add_ps(acc_hi[t], acc_lo[t]);
    s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4e));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xb1));
    alignas(64) float v[16];
    _mm512_store_ps(v, s);
    alignas(32) float m[8];
    _mm256_store_ps(m, mins[t]);
    for (int i = 0; i < 4; i++) y[t * ldy + i] = W::kMin ? v[4 * i] + m[2 * i + 1] : v[4 * i];
  }
}

// One token: rows four at a time (prefetched as one stream), the rest (nr % 4) through the AVX2
// table's decode path.
template <class W>
void dot_decode(GGMLType t, int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, float* y) {
  const int64_t nb = n / QK;
  const uint8_t* end = w + (size_t)nr * ws;
  prefetch_stream_start(w, end);
  thread_local std::vector<float> ad, as;
  thread_local std::vector<int32_t> ao;
  ad.resize((size_t)nb);
  as.resize((size_t)nb);
  ao.resize((size_t)nb * 8);
  prepare_row<W>(a, nb, ad.data(), as.data(), ao.data());
  const OneRow<W> act{a, ad.data(), as.data(), ao.data()};
  int r = 0;
  for (; r + 4 <= nr; r += 4) {
    prefetch_stream_ahead(w + (size_t)r * ws, 4 * ws, end);
    dot_rows4<W, 1>(w + (size_t)r * ws, ws, nb, act, y + r, 0);
  }
  if (r < nr) vec_dot_avx512vnni(t, n, w + (size_t)r * ws, ws, nr - r, a, 0, 1, y + r, 0);
}

// Several tokens: token groups of kNT (repack_tokens, as the AVX2 tiles take them), rows four
// at a time; the rest of the rows (nr % 4) through the AVX2 tiles.
template <class W>
void dot_batch(GGMLType type, int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, size_t as, int nt,
               float* y, int64_t ldy) {
  Scratch& s = scratch();
  const int64_t nb = n / QK;
  s.aq.resize((size_t)(kNT * nb * QK));
  s.ad.resize((size_t)(kNT * nb));
  s.as.resize((size_t)(kNT * nb));
  thread_local std::vector<int32_t> ao;
  if (act_offset<W>()) ao.resize((size_t)(kNT * nb * 8));
  const Repacked act{s.aq.data(), s.ad.data(), s.as.data(), ao.data(), nb};
  const int nr4 = nr / 4 * 4;
  for (int t0 = 0; t0 < nt && nr4 > 0; t0 += kNT) {
    const int ntg = std::min(kNT, nt - t0);
    repack_tokens<W>(s, a, as, t0, ntg, nb);
    if (act_offset<W>()) prepare_tokens<W>(s, ntg, nb, ao.data());
    for (int r = 0; r < nr4; r += 4) {
      const uint8_t* wr = w + (size_t)r * ws;
      float* yr = y + (size_t)t0 * ldy + r;
      switch (ntg) {
        case 1: dot_rows4<W, 1>(wr, ws, nb, act, yr, ldy); break;
        case 2: dot_rows4<W, 2>(wr, ws, nb, act, yr, ldy); break;
        case 3: dot_rows4<W, 3>(wr, ws, nb, act, yr, ldy); break;
        default: dot_rows4<W, 4>(wr, ws, nb, act, yr, ldy); break;
      }
    }
  }
  if (nr4 < nr) vec_dot_avx512vnni(type, n, w + (size_t)nr4 * ws, ws, nr - nr4, a, as, nt, y + nr4, ldy);
}

// ---- K-quants (Q4_K, Q5_K, Q6_K) against Q8_K: a whole super-block per row in four registers ----
//
// The AVX2 tile computes, per (row, token) and super-block, eight int32 lanes
//   isum_j = Σ_g madd(maddubs(w_g, a_g), sc_g)_j      (g = the eight 32-value groups)
//   m_j    = madd(bsums, mn)_j                          (Q4_K/Q5_K mins; Q6_K: the scales)
// and then the float lanes acc_j = fma(isum_j, d_a·d, acc_j), acc_j = fnma(m_j, d_a·dmin, acc_j)
// (Q6_K: acc_j = fma(isum_j - 32 m_j, d_a·d, acc_j)), summed at the end as ((0+4)+(2+6)) +
// ((1+5)+(3+7)). Here the 256 quants of a row's super-block are unpacked into four zmm (two
// groups each), the activation's 256 quants sit in four zmm in the same group order (Q4_K/Q5_K:
// repacked once per call, since their nibble layout pairs groups 4k with 4k+2), and per pair of
// groups one vpmaddubsw (the same int16 pair sums: no saturation, |w| <= 63) and one vpdpwssd
// with the int16 scales (madd + add in one instruction) accumulate into 16 int32 lanes; folding
// the two 256-bit halves gives the AVX2 lanes' isum_j exactly (int32 sums of the same products,
// far from overflow). The sub-block scales therefore multiply in integers as in the reference.
// (vpdpbusd would need the scales applied afterwards with vpmulld: more instructions.) Two rows
// share one zmm of float accumulators (row A in lanes 0-7, row B in 8-15) and take the AVX2
// tile's float operations lane for lane with the same d_a·d (one IEEE product), and the final
// sum adds the lanes in the AVX2 order. So every result is the AVX2 table's bits
// (tests/test_quant_dot.py checks it), for any nr, nt and alignment.

inline __m512i load64(const void* p) { return _mm512_loadu_si512(p); }
inline __m512i halves(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
inline __m512 halves_ps(float lo, float hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(lo)), _mm256_set1_ps(hi), 1);
}

// One super-block of one weight row, unpacked: the quants of group pair k in q[k] (the groups of
// K::kPairs[k], 32 bytes each), the int16 madd scales of those groups in sc[k], the int16
// multipliers of the activation's 16 bsums in mn, and d, dmin.
struct KBlock512 {
  __m512i q[4], sc[4];
  __m256i mn;
  float d, dmin;
};

// Q4_K / Q5_K: qs[64k .. 64k+64) holds groups 4k (low nibbles of its first 32 bytes), 4k+1
// (high nibbles, first 32), 4k+2 (low, last 32) and 4k+3 (high, last 32); pairs (0,2), (1,3),
// (4,6), (5,7). The activation is repacked into that order (repack_k45).
template <bool kFive>
struct Q45K512 {
  static constexpr int kBytes = kFive ? 176 : 144, kQs = kFive ? 48 : 16;
  static constexpr bool kMinTerm = true, kRepack = true;
  static void unpack(const uint8_t* p, KBlock512* b) {
    b->d = h2f(p);
    b->dmin = h2f(p + 2);
    // the scale words exactly as Q45K::prep
    const uint32_t w0 = rd32(p + 4), w1 = rd32(p + 8), w2 = rd32(p + 12);
    const uint32_t lo6 = 0x3f3f3f3f, lo4 = 0x0f0f0f0f, lo2 = 0x03030303;
    const uint32_t sc03 = w0 & lo6, mn03 = w1 & lo6;
    const uint32_t sc47 = (w2 & lo4) | ((w0 >> 6) & lo2) << 4;
    const uint32_t mn47 = ((w2 >> 4) & lo4) | ((w1 >> 6) & lo2) << 4;
    const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc47, (int)sc03)));
    // pair k = groups (a, b): int16 lanes 0-15 take scale a, 16-31 scale b
    b->sc[0] = _mm512_permutexvar_epi16(halves(_mm256_set1_epi16(0), _mm256_set1_epi16(2)), sc16);
    b->sc[1] = _mm512_permutexvar_epi16(halves(_mm256_set1_epi16(1), _mm256_set1_epi16(3)), sc16);
    b->sc[2] = _mm512_permutexvar_epi16(halves(_mm256_set1_epi16(4), _mm256_set1_epi16(6)), sc16);
    b->sc[3] = _mm512_permutexvar_epi16(halves(_mm256_set1_epi16(5), _mm256_set1_epi16(7)), sc16);
    const __m128i mn16 = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn47, (int)mn03));
    b->mn = _mm256_setr_m128i(_mm_unpacklo_epi16(mn16, mn16), _mm_unpackhi_epi16(mn16, mn16));
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const __m512i q0 = load64(p + kQs), q1 = load64(p + kQs + 64);
    b->q[0] = _mm512_and_si512(q0, nib);
    b->q[1] = _mm512_and_si512(_mm512_srli_epi16(q0, 4), nib);
    b->q[2] = _mm512_and_si512(q1, nib);
    b->q[3] = _mm512_and_si512(_mm512_srli_epi16(q1, 4), nib);
    if (kFive) {  // bit 4 of value l of group j: bit j of qh[l]
      const __m512i qh = _mm512_broadcast_i64x4(load32(p + 16)), sixteen = _mm512_set1_epi8(0x10);
      const int ga[4] = {0, 1, 4, 5};
      EOQ_UNROLL
      for (int k = 0; k < 4; k++) {
        const __m512i bit = halves(_mm256_set1_epi8((char)(1 << ga[k])), _mm256_set1_epi8((char)(1 << (ga[k] + 2))));
        b->q[k] = _mm512_mask_add_epi8(b->q[k], _mm512_test_epi8_mask(qh, bit), b->q[k], sixteen);
      }
    }
  }
};

// Q6_K: ql[64h .. 64h+64) holds groups 4h, 4h+1 (low nibbles) and 4h+2, 4h+3 (high nibbles),
// so the pairs are (0,1), (2,3), (4,5), (6,7): the activation's own order. The top two bits of
// group 4h+kk are bits 2kk, 2kk+1 of qh[32h + l].
struct Q6K512 {
  static constexpr int kBytes = 210;
  static constexpr bool kMinTerm = false, kRepack = false;
  static void unpack(const uint8_t* p, KBlock512* b) {
    b->d = h2f(p + 208);
    b->dmin = 0.0f;
    const __m128i sc8 = load16(p + 192);
    b->mn = _mm256_cvtepi8_epi16(sc8);  // scale_s pairs with bsums_s
    // pair k = groups (2k, 2k+1): int16 lane i takes scale 4k + i/8 (sub-blocks of 16). Each
    // int16 lane takes the byte twice; the arithmetic shift by 8 leaves it sign-extended.
    const __m512i scb = _mm512_broadcast_i32x4(sc8);
    EOQ_UNROLL
    for (int k = 0; k < 4; k++) {
      const __m512i idx = _mm512_inserti32x4(
          _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(_mm_set1_epi8((char)(4 * k))),
                                                _mm_set1_epi8((char)(4 * k + 1)), 1),
                             _mm_set1_epi8((char)(4 * k + 2)), 2),
          _mm_set1_epi8((char)(4 * k + 3)), 3);
      b->sc[k] = _mm512_srai_epi16(_mm512_shuffle_epi8(scb, idx), 8);
    }
    const __m512i nib = _mm512_set1_epi8(0x0f), top = _mm512_set1_epi8(0x30);
    EOQ_UNROLL
    for (int h = 0; h < 2; h++) {
      const __m512i ql = load64(p + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(load32(p + 128 + 32 * h));
      // bits (0,1) | (2,3) to 4,5 for the low-nibble pair, bits (4,5) | (6,7) for the high one
      const __m512i hlo = _mm512_sllv_epi16(qh, halves(_mm256_set1_epi16(4), _mm256_set1_epi16(2)));
      const __m512i hhi = _mm512_srlv_epi16(qh, halves(_mm256_set1_epi16(0), _mm256_set1_epi16(2)));
      b->q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, nib), _mm512_and_si512(hlo, top));
      b->q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), nib), _mm512_and_si512(hhi, top));
    }
  }
};

// The activation quants of a Q4_K/Q5_K product in the pairs' group order: per super-block
// [g0 | g2], [g1 | g3], [g4 | g6], [g5 | g7] (32 bytes each), nsb super-blocks into out.
// Q2_K/Q3_K (repack_k23): [g0 | g4], [g1 | g5], [g2 | g6], [g3 | g7].
inline void repack_chunks(const uint8_t* arow, int64_t nsb, int8_t* out, const int* src) {
  for (int64_t i = 0; i < nsb; i++, out += QK_K) {
    const int8_t* q = act_block(arow, i)->qs;
    for (int k = 0; k < 8; k++) std::memcpy(out + 32 * k, q + 32 * src[k], 32);
  }
}
inline void repack_k45(const uint8_t* arow, int64_t nsb, int8_t* out) {
  static const int src[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  repack_chunks(arow, nsb, out, src);
}
inline void repack_k23(const uint8_t* arow, int64_t nsb, int8_t* out) {
  static const int src[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  repack_chunks(arow, nsb, out, src);
}

// y[t*ldy + j] for the 2P rows rows[0..2P) (j < nout) and T tokens: token t's super-block i has
// its quants (in K's pair order) at aq[t] + 256 i (repacked) or in its raw block (Q6_K: aq[t] =
// the raw row's first qs, stride 292), and its d and bsums in the raw row araw[t].
template <class K, int P, int T>
EOQ_NOINLINE void kdot_rows(const uint8_t* const* rows, int nout, int64_t nsb, const int8_t* const* aq,
                            const uint8_t* const* araw, float* y, int64_t ldy) {
  __m512 acc[P][T];
  EOQ_UNROLL
  for (int p = 0; p < P; p++)
    EOQ_UNROLL
    for (int t = 0; t < T; t++) acc[p][t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nsb; i++) {
    EOQ_UNROLL
    for (int p = 0; p < P; p++) {
      KBlock512 ba, bb;
      K::unpack(rows[2 * p] + i * K::kBytes, &ba);
      K::unpack(rows[2 * p + 1] + i * K::kBytes, &bb);
      const __m512i mn = halves(ba.mn, bb.mn);
      const __m512 d = halves_ps(ba.d, bb.d), dmin = halves_ps(ba.dmin, bb.dmin);
      EOQ_UNROLL
      for (int t = 0; t < T; t++) {
        const int8_t* q = aq[t] + i * (K::kRepack ? QK_K : (int64_t)sizeof(block_q8_K));
        const block_q8_K* ab = act_block(araw[t], i);
        __m512i ia = _mm512_setzero_si512(), ib = _mm512_setzero_si512();
        EOQ_UNROLL
        for (int k = 0; k < 4; k++) {
          const __m512i a = load64(q + 64 * k);
          ia = _mm512_dpwssd_epi32(ia, _mm512_maddubs_epi16(ba.q[k], a), ba.sc[k]);
          ib = _mm512_dpwssd_epi32(ib, _mm512_maddubs_epi16(bb.q[k], a), bb.sc[k]);
        }
        const __m512i isum = halves(_mm256_add_epi32(_mm512_castsi512_si256(ia), _mm512_extracti64x4_epi64(ia, 1)),
                                    _mm256_add_epi32(_mm512_castsi512_si256(ib), _mm512_extracti64x4_epi64(ib, 1)));
        const __m512i m = _mm512_madd_epi16(_mm512_broadcast_i64x4(load32(ab->bsums)), mn);
        const __m512 da = _mm512_set1_ps(ab->d);
        if (K::kMinTerm) {
          acc[p][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(da, d), acc[p][t]);
          acc[p][t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(da, dmin), acc[p][t]);
        } else {
          const __m512i v = _mm512_sub_epi32(isum, _mm512_slli_epi32(m, 5));  // S - 32 M
          acc[p][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(da, d), acc[p][t]);
        }
      }
    }
  }
  EOQ_UNROLL
  for (int p = 0; p < P; p++)
    EOQ_UNROLL
    for (int t = 0; t < T; t++) {
      // per row (256-bit half): lanes i + i+4, then (0+2, 1+3), then those two: hsum's order
      __m512 s = acc[p][t];
      s = _mm512_add_ps(s, _mm512_shuffle_f32x4(s, s, 0xb1));
      s = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4e));
      s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xb1));
      alignas(64) float v[16];
      _mm512_store_ps(v, s);
      if (2 * p < nout) y[t * ldy + 2 * p] = v[0];
      if (2 * p + 1 < nout) y[t * ldy + 2 * p + 1] = v[8];
    }
}

// Rows r..r+3 (or the last 1..3: an odd row is paired with itself, its twin's result dropped)
// against the T tokens of aq / araw.
template <class K, int T>
inline void kdot_tile(const uint8_t* w, size_t ws, int r, int nr, int64_t nsb, const int8_t* const* aq,
                      const uint8_t* const* araw, float* y, int64_t ldy) {
  const int left = std::min(4, nr - r);
  const uint8_t* rows[4];
  for (int j = 0; j < 4; j++) rows[j] = w + (size_t)(r + std::min(j, left - 1)) * ws;
  if (left > 2)
    kdot_rows<K, 2, T>(rows, left, nsb, aq, araw, y + r, ldy);
  else
    kdot_rows<K, 1, T>(rows, left, nsb, aq, araw, y + r, ldy);
}

// Tokens per group in prompt batches: eight, so that each unpacked super-block of a row pair
// (scales decoded, nibbles split: about as many instructions as four tokens' products) serves
// eight tokens; kdot_rows<K, 1, 8> keeps its 8 accumulators, the pair's 16 unpacked registers
// and the operands in the 32 zmm. Groups of fewer tokens take the 4-row tiles.
constexpr int kKNT = 8;

// Activation quants for K: the raw rows (Q6_K) or repacked copies in thread-local scratch.
template <class K>
void k_act_quants(const uint8_t* a, size_t as, int t0, int ntg, int64_t nsb, const int8_t** aq,
                  const uint8_t** araw) {
  thread_local std::vector<int8_t> buf;
  if (K::kRepack) buf.resize((size_t)(kKNT * nsb * QK_K));
  for (int t = 0; t < ntg; t++) {
    araw[t] = a + (size_t)(t0 + t) * as;
    if (K::kRepack) {
      repack_k45(araw[t], nsb, buf.data() + (size_t)t * nsb * QK_K);
      aq[t] = buf.data() + (size_t)t * nsb * QK_K;
    } else {
      aq[t] = act_block(araw[t], 0)->qs;  // super-block i's quants 292 i bytes on
    }
  }
}

// One token (decode): rows four at a time, prefetched kPrefetchAhead bytes ahead as one stream.
// Several: token groups of kKNT (the rows re-read from cache for each group, as the AVX2 walk);
// a full group runs row pairs x 8 tokens, a smaller one 4-row tiles of up to 4 tokens.
template <class K>
void dot_k512(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, size_t as, int nt, float* y,
              int64_t ldy) {
  const int64_t nsb = n / QK_K;
  const int8_t* aq[kKNT];
  const uint8_t* araw[kKNT];
  if (nt == 1) {
    k_act_quants<K>(a, as, 0, 1, nsb, aq, araw);
    const uint8_t* end = w + (size_t)nr * ws;
    prefetch_stream_start(w, end);
    for (int r = 0; r < nr; r += 4) {
      prefetch_stream_ahead(w + (size_t)r * ws, 4 * ws, end);
      kdot_tile<K, 1>(w, ws, r, nr, nsb, aq, araw, y, ldy);
    }
    return;
  }
  for (int t0 = 0; t0 < nt; t0 += kKNT) {
    const int ntg = std::min(kKNT, nt - t0);
    k_act_quants<K>(a, as, t0, ntg, nsb, aq, araw);
    float* yt = y + (size_t)t0 * ldy;
    if (ntg == kKNT) {
      for (int r = 0; r < nr; r += 2) {  // an odd last row paired with itself, as in kdot_tile
        const uint8_t* rows[2] = {w + (size_t)r * ws, w + (size_t)std::min(r + 1, nr - 1) * ws};
        kdot_rows<K, 1, kKNT>(rows, std::min(2, nr - r), nsb, aq, araw, yt + r, ldy);
      }
      continue;
    }
    for (int u0 = 0; u0 < ntg; u0 += 4) {
      const int ntu = std::min(4, ntg - u0);
      float* yu = yt + (size_t)u0 * ldy;
      for (int r = 0; r < nr; r += 4) switch (ntu) {
          case 1: kdot_tile<K, 1>(w, ws, r, nr, nsb, aq + u0, araw + u0, yu, ldy); break;
          case 2: kdot_tile<K, 2>(w, ws, r, nr, nsb, aq + u0, araw + u0, yu, ldy); break;
          case 3: kdot_tile<K, 3>(w, ws, r, nr, nsb, aq + u0, araw + u0, yu, ldy); break;
          default: kdot_tile<K, 4>(w, ws, r, nr, nsb, aq + u0, araw + u0, yu, ldy); break;
        }
    }
  }
}

// ---- Q2_K and Q3_K: the scalar reference's bits ----
//
// The AVX2 table (and so ggml's bits are not claimed here) uses the scalar reference for these
// two; this computes the reference's integers S = Σ_s sc_s Σ q_w q_a and (Q2_K) M = Σ_s mn_s
// bsums_s per super-block with AVX-512 (exact, any order) and then the reference's float steps
// in its order, sum += (d_a·d)·S, sum -= (d_a·dmin)·M, each product and sum rounded on its own
// (no fused multiply-add: the reference is compiled without FMA). So the results are the scalar
// table's bits, which are also the AVX2 table's. Per row one super-block at a time: the 64
// 2-bit bytes in one zmm hold values [32k .. 32k+32) and [128+32k ..) in bits 2k, 2k+1 (pair
// k), matched with the activation repacked by repack_k23; the int16 scales of pair k's four
// 16-value sub-blocks 2k, 2k+1, 8+2k, 9+2k fill the four 128-bit lanes.
template <bool kThree>
struct Q23K512 {
  static constexpr int kBytes = kThree ? 110 : 84;
  // S, M of one super-block at p against the repacked quants q and the raw block ab
  static void ints(const uint8_t* p, const int8_t* q, const block_q8_K* ab, int* S, int* M) {
    const __m256i bs = load32(ab->bsums);
    __m128i sc8;  // the 16 scales as int8
    if (kThree) {
      const uint8_t* s = p + 96;
      alignas(16) int8_t v[16];
      for (int j = 0; j < 16; j++) {
        const int lo = (s[j % 8] >> (4 * (j / 8))) & 0x0f, hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        v[j] = (int8_t)((lo | hi << 4) - 32);
      }
      sc8 = _mm_load_si128((const __m128i*)v);
    } else {
      sc8 = _mm_and_si128(load16(p), _mm_set1_epi8(0x0f));
    }
    const __m512i scb = _mm512_broadcast_i32x4(sc8);
    const __m512i qs = load64(p + (kThree ? 32 : 16));
    __m512i isum = _mm512_setzero_si512();
    __m512i hm;
    if (kThree) hm = _mm512_broadcast_i64x4(load32(p));
    EOQ_UNROLL
    for (int k = 0; k < 4; k++) {
      __m512i w = _mm512_and_si512(_mm512_srli_epi16(qs, 2 * k), _mm512_set1_epi8(3));
      if (kThree) {  // u = low + 4·(high bit): q = u - 4
        const __m512i bit = halves(_mm256_set1_epi8((char)(1 << k)), _mm256_set1_epi8((char)(1 << (4 + k))));
        w = _mm512_mask_add_epi8(w, _mm512_test_epi8_mask(hm, bit), w, _mm512_set1_epi8(4));
      }
      const __m512i idx = _mm512_inserti32x4(
          _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(_mm_set1_epi8((char)(2 * k))),
                                                _mm_set1_epi8((char)(2 * k + 1)), 1),
                             _mm_set1_epi8((char)(8 + 2 * k)), 2),
          _mm_set1_epi8((char)(9 + 2 * k)), 3);
      const __m512i sc = _mm512_srai_epi16(_mm512_shuffle_epi8(scb, idx), 8);
      isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(w, load64(q + 64 * k)), sc);
    }
    if (kThree) {  // S = Σ sc u a - 4 Σ sc bsums; no min term
      const int sb = hsum_i32(_mm256_madd_epi16(bs, _mm256_cvtepi8_epi16(sc8)));
      *S = _mm512_reduce_add_epi32(isum) - 4 * sb;
      *M = 0;
    } else {
      *S = _mm512_reduce_add_epi32(isum);
      const __m128i mn8 = _mm_and_si128(_mm_srli_epi16(load16(p), 4), _mm_set1_epi8(0x0f));
      *M = hsum_i32(_mm256_madd_epi16(bs, _mm256_cvtepu8_epi16(mn8)));
    }
  }
};

// sum + (x·y), the product and the sum each rounded to float (never fused)
inline float add_prod(float sum, float x, float y) {
  volatile float prod = x * y;
  return sum + prod;
}

template <bool kThree>
void dot_k23(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* a, size_t as, int nt, float* y,
             int64_t ldy) {
  using K = Q23K512<kThree>;
  const int64_t nsb = n / QK_K;
  thread_local std::vector<int8_t> buf;
  buf.resize((size_t)(kNT * nsb * QK_K));
  for (int t0 = 0; t0 < nt; t0 += kNT) {
    const int ntg = std::min(kNT, nt - t0);
    for (int t = 0; t < ntg; t++) repack_k23(a + (size_t)(t0 + t) * as, nsb, buf.data() + (size_t)t * nsb * QK_K);
    for (int r = 0; r < nr; r++) {
      const uint8_t* row = w + (size_t)r * ws;
      float sum[kNT] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t i = 0; i < nsb; i++) {
        const uint8_t* p = row + i * K::kBytes;
        const float d = h2f(p + (kThree ? 108 : 80)), dmin = kThree ? 0.0f : h2f(p + 82);
        for (int t = 0; t < ntg; t++) {
          const block_q8_K* ab = act_block(a + (size_t)(t0 + t) * as, i);
          int S, M;
          K::ints(p, buf.data() + ((size_t)t * nsb + i) * QK_K, ab, &S, &M);
          sum[t] = add_prod(sum[t], ab->d * d, (float)S);
          if (!kThree) sum[t] = add_prod(sum[t], -(ab->d * dmin), (float)M);  // sum - p == sum + (-p)
        }
      }
      for (int t = 0; t < ntg; t++) y[(size_t)(t0 + t) * ldy + r] = sum[t];
    }
  }
}

// The legacy formats and the K-quants here; every other type through the AVX2 table's own code (this file's
// compile flags would let the compiler vectorise the float paths differently).
void vec_dot_vnni(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy) {
  const uint8_t *wr = (const uint8_t*)w_rows, *a = (const uint8_t*)a_rows;
  const bool ok = n >= 0 && n % QK == 0 && nr >= 0;  // otherwise the checks (and errors) of the AVX2 entry
  if (n >= 0 && n % QK_K == 0 && nr >= 0 && nt >= 0) switch (w) {
      case GGMLType::Q4_K: return dot_k512<Q45K512<false>>(n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      case GGMLType::Q5_K: return dot_k512<Q45K512<true>>(n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      case GGMLType::Q6_K: return dot_k512<Q6K512>(n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      case GGMLType::Q2_K: return dot_k23<false>(n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      case GGMLType::Q3_K: return dot_k23<true>(n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      default: break;
    }
  if (ok && nt == 1) {
    switch (w) {
      case GGMLType::Q4_0: return dot_decode<Q4_0W>(w, n, wr, w_stride, nr, a, y);
      case GGMLType::Q4_1: return dot_decode<Q4_1W>(w, n, wr, w_stride, nr, a, y);
      case GGMLType::Q8_0: return dot_decode<Q8_0W>(w, n, wr, w_stride, nr, a, y);
      default: break;
    }
  } else if (ok && nt > 1) {
    switch (w) {
      case GGMLType::Q4_0: return dot_batch<Q4_0W>(w, n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      case GGMLType::Q4_1: return dot_batch<Q4_1W>(w, n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      case GGMLType::Q8_0: return dot_batch<Q8_0W>(w, n, wr, w_stride, nr, a, a_stride, nt, y, ldy);
      default: break;
    }
  }
  switch (w) {
    case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q5_0: case GGMLType::Q5_1: case GGMLType::Q8_0:
      return vec_dot_avx512vnni(w, n, w_rows, w_stride, nr, a_rows, a_stride, nt, y, ldy);
    default:
      return vec_dot_avx2(w, n, w_rows, w_stride, nr, a_rows, a_stride, nt, y, ldy);
  }
}

}  // namespace

const CpuKernels* cpu_kernels_avx512vnni() {
  static const CpuKernels* k = []() -> const CpuKernels* {
    const CpuKernels* base = cpu_kernels_avx2();
    if (!base || !__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512vl") ||
        !__builtin_cpu_supports("avx512bw"))
      return nullptr;
    static CpuKernels t = *base;
    t.isa = "avx512vnni";
    t.vec_dot = vec_dot_vnni;
    if (__builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512dq")) {
      t.scores_codes = scores_codes_avx512;
      t.scores_codes_q8 = scores_codes_q8_avx512;
      t.scores_f32t_chain = scores_f32t_chain_avx512;
      t.values_f32_chain = values_f32_chain_avx512;
      t.values_codes = values_codes_avx512;
      t.decode_codes = decode_codes_avx512;
      t.decode_log_norms = decode_log_norms_avx512;
      t.softmax_exp = softmax_exp_avx512;
    }
    return &t;
  }();
  return k;
}

}  // namespace eoq
#else
#include "kernels/kernels.h"
namespace eoq {
const CpuKernels* cpu_kernels_avx512vnni() { return nullptr; }
}  // namespace eoq
#endif
