// The weight x activation products of kernels/cpu/avx2_dot.cpp compiled a second time for CPUs
// with AVX512-VNNI (and AVX512VL): the integer sum of each group of four u8·s8 products of the
// legacy formats (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) is one vpdpbusd instead of maddubs + madd. The lane
// sums are the same integers and every float operation is the same, so the results are the
// AVX2 table's bits (tests/test_quant_dot.py checks both against the scalar reference). The
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

// Σ of the u8·s8 products in groups of four, w·a with w signed (Q8_0) or unsigned
template <class W>
inline __m512i dot_u8s8(__m512i w, __m512i a) {
  if (W::kSigned) {  // |w| · (a with w's sign), as the AVX2 kernel's vpsignb pair
    const __mmask64 neg = _mm512_movepi8_mask(w);
    const __m512i as = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
    const __m512i aw = _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(w, w), as);  // 0 where w == 0
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), aw);
  }
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
}

// Block b of token t of the activations: its 32 quants, d and (Q8_1) s. One raw activation row
// (decode), or a token group repacked by repack_tokens (prompt batches).
template <class W>
struct RawRow {
  const uint8_t* a;
  const uint8_t* qs(int64_t b, int) const { return a + b * W::kActBytes + W::kActQs; }
  float d(int64_t b, int) const { return h2f(a + b * W::kActBytes); }
  float s(int64_t b, int) const { return h2f(a + b * W::kActBytes + 2); }
};
struct Repacked {
  const int8_t* aq;
  const float *ad, *as;
  int64_t nb;
  const int8_t* qs(int64_t b, int t) const { return aq + (b * kNT + t) * QK; }
  float d(int64_t b, int t) const { return ad[b * kNT + t]; }
  float s(int64_t b, int t) const { return as[t * nb + b]; }
};

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
  // the scale: row i's d_w·d_a (even lane 2i of the converted pairs) in lanes 4i..4i+3
  const __m512i didx = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
  for (int64_t b = 0; b < nb; b++) {
    const size_t o = (size_t)b * W::kBytes;
    __m512i lo, hi;
    if (W::kSigned) {
      lo = load4x16(p[0] + o + W::kQs, p[1] + o + W::kQs, p[2] + o + W::kQs, p[3] + o + W::kQs);
      hi = load4x16(p[0] + o + W::kQs + 16, p[1] + o + W::kQs + 16, p[2] + o + W::kQs + 16, p[3] + o + W::kQs + 16);
    } else {
      const __m512i q = load4x16(p[0] + o + W::kQs, p[1] + o + W::kQs, p[2] + o + W::kQs, p[3] + o + W::kQs);
      lo = _mm512_and_si512(q, nib);
      hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), nib);
    }
    // the rows' (d, m) or (d, next bytes) as f16 pairs -> [d0, m0, d1, m1, d2, m2, d3, m3]
    const __m256 dm = _mm256_cvtph_ps(_mm_setr_epi32((int)rd32(p[0] + o), (int)rd32(p[1] + o),
                                                     (int)rd32(p[2] + o), (int)rd32(p[3] + o)));
    EOQ_UNROLL
    for (int t = 0; t < T; t++) {
      const __m512i alo = _mm512_broadcast_i32x4(load16(act.qs(b, t)));
      const __m512i ahi = _mm512_broadcast_i32x4(load16(act.qs(b, t) + 16));
      __m512i ilo = dot_u8s8<W>(lo, alo), ihi = dot_u8s8<W>(hi, ahi);
      if (W::kOffset) {
        const __m512i off = _mm512_set1_epi8((char)W::kOffset);
        ilo = _mm512_sub_epi32(ilo, _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, alo));
        ihi = _mm512_sub_epi32(ihi, _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, ahi));
      }
      const __m512 sc =
          _mm512_permutexvar_ps(didx, _mm512_zextps256_ps512(_mm256_mul_ps(dm, _mm256_set1_ps(act.d(b, t)))));
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
  int r = 0;
  for (; r + 4 <= nr; r += 4) {
    prefetch_stream_ahead(w + (size_t)r * ws, 4 * ws, end);
    dot_rows4<W, 1>(w + (size_t)r * ws, ws, nb, RawRow<W>{a}, y + r, 0);
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
  const Repacked act{s.aq.data(), s.ad.data(), s.as.data(), nb};
  const int nr4 = nr / 4 * 4;
  for (int t0 = 0; t0 < nt && nr4 > 0; t0 += kNT) {
    const int ntg = std::min(kNT, nt - t0);
    repack_tokens<W>(s, a, as, t0, ntg, nb);
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

// The legacy formats here; every other type through the AVX2 table's own code (this file's
// compile flags would let the compiler vectorise the float paths differently).
void vec_dot_vnni(GGMLType w, int64_t n, const void* w_rows, size_t w_stride, int nr, const void* a_rows,
                  size_t a_stride, int nt, float* y, int64_t ldy) {
  const uint8_t *wr = (const uint8_t*)w_rows, *a = (const uint8_t*)a_rows;
  const bool ok = n >= 0 && n % QK == 0 && nr >= 0;  // otherwise the checks (and errors) of the AVX2 entry
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
