// Test hooks for the compressed KV cache: TurboQuant codebooks and rotation, the Jacobi
// eigensolver, eOptShrink, block sealing, and a standalone KVCache driven from NumPy
// (KVCacheTester), so tests can check attention from the codes against explicit dequantization.
#include <algorithm>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "engine/eoptshrink.h"
#include "base/error.h"
#include "engine/kv_cache.h"
#include "engine/backend.h"
#include "base/fp16.h"
#include "kernels/turboquant.h"

namespace py = pybind11;

namespace eoq {
// Defined in engine/kv_cache_compressed.cpp: layer il of a compressed cache, decoded and
// un-rotated, k and v [n_tokens][n_head_kv][head_dim].
void compressed_kv_dequantized(const KVCache& cache, int il, std::vector<float>& k, std::vector<float>& v);
}  // namespace eoq

namespace eoq_py {

namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using f64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

[[noreturn]] void bad(const std::string& msg) { throw eoq::Error(eoq::ErrorCode::invalid_arg, msg); }

py::array_t<float> farray(const std::vector<float>& v, std::vector<py::ssize_t> shape) {
  py::array_t<float> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// {"mode": ..., knobs...} -> KVCacheParams (the knobs parsed as for Engine(kv_options=...)).
eoq::KVCacheParams parse_params(const py::dict& d) {
  py::dict opts;
  std::string mode = "f16";
  for (auto item : d) {
    if (py::str(item.first).cast<std::string>() == "mode") mode = item.second.cast<std::string>();
    else opts[item.first] = item.second;
  }
  return kv_params_from_dict(mode, opts);
}

// A KV cache outside any model: append/attend on NumPy arrays.
class KVCacheTester {
 public:
  KVCacheTester(const py::dict& params, int n_layer, int n_head_kv, int head_dim, int n_ctx, int n_threads)
      : backend_(eoq::make_cpu_backend(n_threads)) {
    eoq::KVCacheShape s{n_layer, n_head_kv, head_dim, n_ctx};
    cache_ = backend_->make_kv_cache(parse_params(params), s);
    held_.assign(n_layer, 0);
  }
  const eoq::KVCacheShape& shape() const { return cache_->shape(); }
  void check_layer(int il) const {
    if (il < 0 || il >= shape().n_layer) bad("layer " + std::to_string(il) + " out of range");
  }
  // k, v: [n][n_head_kv][head_dim], appended at the layer's next position.
  void append(int il, f32 k, f32 v) {
    check_layer(il);
    const auto& s = shape();
    if (k.ndim() != 3 || k.shape(1) != s.n_head_kv || k.shape(2) != s.head_dim || v.ndim() != 3 ||
        v.shape(0) != k.shape(0) || v.shape(1) != s.n_head_kv || v.shape(2) != s.head_dim)
      bad("append: k and v must be [n, n_head_kv, head_dim]");
    const int n = (int)k.shape(0);
    if (held_[il] + n > s.n_ctx) bad("append: context full");
    py::gil_scoped_release nogil;
    const int64_t kv_dim = (int64_t)s.n_head_kv * s.head_dim;
    cache_->append(il, held_[il], n, eoq::host_tensor(const_cast<float*>(k.data()), kv_dim, n),
                   eoq::host_tensor(const_cast<float*>(v.data()), kv_dim, n));
    held_[il] += n;
  }
  // q: [n][n_head][head_dim] at positions pos0..; returns the attention output, same shape.
  py::array_t<float> attend(int il, int pos0, f32 q) {
    check_layer(il);
    const auto& s = shape();
    if (q.ndim() != 3 || q.shape(2) != s.head_dim || q.shape(1) % s.n_head_kv != 0)
      bad("attend: q must be [n, n_head, head_dim] with n_head a multiple of n_head_kv");
    const int n = (int)q.shape(0), nh = (int)q.shape(1);
    if (pos0 < 0 || pos0 + n > held_[il]) bad("attend: queries must sit at positions already appended");
    py::array_t<float> out({(py::ssize_t)n, (py::ssize_t)nh, (py::ssize_t)s.head_dim});
    float* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      const int64_t q_dim = (int64_t)nh * s.head_dim;
      eoq::Tensor ot = eoq::host_tensor(o, q_dim, n);
      cache_->attend(il, pos0, n, nh, eoq::host_tensor(const_cast<float*>(q.data()), q_dim, n), ot);
    }
    return out;
  }
  py::tuple dequantized(int il) {
    check_layer(il);
    std::vector<float> k, v;
    eoq::compressed_kv_dequantized(*cache_, il, k, v);
    const auto& s = shape();
    std::vector<py::ssize_t> sh{(py::ssize_t)held_[il], s.n_head_kv, s.head_dim};
    return py::make_tuple(farray(k, sh), farray(v, sh));
  }
  eoq::KVCache& cache() { return *cache_; }
  void clear() {
    cache_->clear();
    held_.assign(shape().n_layer, 0);
  }

 private:
  std::unique_ptr<eoq::Backend> backend_;  // before the cache: it computes on the backend's pool
  std::unique_ptr<eoq::KVCache> cache_;
  std::vector<int> held_;
};

py::dict seal_to_dict(const float* X, int n, int d, const eoq::SealParams& sp) {
  eoq::SealedBlock blk;
  eoq::SealInfo info;
  {
    py::gil_scoped_release nogil;
    eoq::seal_block(X, n, d, sp, blk, info);
  }
  const size_t nd = (size_t)n * d;
  std::vector<float> recon(nd), low(nd, 0.0f), res(nd, 0.0f);
  blk.dequantize(recon.data());
  std::vector<float> codes(nd, 0.0f), norms(n, 0.0f);
  if (blk.kind == eoq::SealedBlock::compressed) {
    const eoq::TurboRowCodec codec(d, blk.bits);
    for (int t = 0; t < n; t++) {
      codec.decode(blk.codes.data() + t * blk.code_bytes(), blk.norm_f16((int)t), &res[(size_t)t * d]);
      norms[t] = eoq::fp16_to_fp32(blk.norm_f16((int)t));
      for (int j = 0; j < d; j++) codes[(size_t)t * d + j] = (float)eoq::get_bits(blk.codes.data() + t * blk.code_bytes(), j, blk.bits);
    }
    if (blk.rank > 0) {
      std::vector<float> coef((size_t)n * blk.rank), basis((size_t)blk.rank * d);
      blk.factors(coef.data(), basis.data());
      for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++) {
          float s = 0;
          for (int i = 0; i < blk.rank; i++) s += coef[(size_t)t * blk.rank + i] * basis[(size_t)i * d + j];
          low[(size_t)t * d + j] = s;
        }
    }
  }
  py::dict out;
  out["kind"] = blk.kind == eoq::SealedBlock::exact ? "exact" : "compressed";
  out["rank"] = info.rank;
  out["rank_raw"] = info.rank_raw;
  out["sigma"] = info.sigma;
  out["phi"] = info.phi;
  out["gains"] = info.gains;
  out["rel_err"] = info.rel_err;
  out["lowrank_energy"] = info.lowrank_energy;
  out["fallback"] = eoq::seal_fallback_name(info.fallback);
  out["lowrank"] = farray(low, {n, d});
  out["residual"] = farray(res, {n, d});
  out["recon"] = farray(recon, {n, d});
  py::array_t<uint8_t> c({(py::ssize_t)n, (py::ssize_t)d});
  for (size_t i = 0; i < nd; i++) c.mutable_data()[i] = (uint8_t)codes[i];
  out["codes"] = c;
  out["norms"] = norms;  // decoded f16 values, whichever way they are stored
  out["norm_codes"] = std::vector<int>(blk.norm_codes.begin(), blk.norm_codes.end());  // norm_bits 8 (else empty)
  out["norm_shift"] = blk.norm_shift;
  out["bytes"] = blk.bytes();
  out["bits"] = blk.bytes() * 8;
  out["bits_per_entry"] = blk.bytes() * 8.0 / (double)nd;
  out["bits_per_entry_paper"] =
      blk.kind == eoq::SealedBlock::exact ? 16.0 : blk.bits + (double)blk.rank * (n + d) * blk.factor_bits / (double)nd;
  return out;
}

}  // namespace

void bind_kv(py::module_& m) {
  m.def(
      "lloyd_max",
      [](int d, int bits) {
        const eoq::LloydMaxCodebook& cb = eoq::lloyd_max_codebook(d, bits);
        return py::array_t<double>((py::ssize_t)cb.centroids.size(), std::vector<double>(cb.centroids.begin(), cb.centroids.end()).data());
      },
      py::arg("d"), py::arg("bits"), "Lloyd–Max centroids (ascending, units of 1/sqrt(d)) for dimension d.");
  m.def("lloyd_max_mse", [](int d, int bits) { return eoq::lloyd_max_codebook(d, bits).mse; }, py::arg("d"), py::arg("bits"));
  m.def(
      "rotation_matrix",
      [](int d, uint64_t seed) {
        const eoq::Rotation r(d, seed);
        return farray(r.matrix(), {d, d});
      },
      py::arg("d"), py::arg("seed"));
  // Rows of x [n, d] through Π (or Πᵀ with transpose=True), the way the cache applies it.
  m.def(
      "rotation_apply",
      [](f32 x, uint64_t seed, bool transpose) {
        if (x.ndim() != 2) bad("rotation_apply: x must be [n, d]");
        const int n = (int)x.shape(0), d = (int)x.shape(1);
        const eoq::Rotation r(d, seed);
        std::vector<float> y((size_t)n * d);
        for (int i = 0; i < n; i++) {
          if (transpose) r.apply_t(x.data() + (size_t)i * d, &y[(size_t)i * d]);
          else r.apply(x.data() + (size_t)i * d, &y[(size_t)i * d]);
        }
        return farray(y, {n, d});
      },
      py::arg("x"), py::arg("seed"), py::arg("transpose") = false);
  // TurboQuant rows x [n, d] (no rotation): returns (decoded [n, d], codes [n, d], stored norms [n]).
  m.def(
      "turbo_roundtrip",
      [](f32 x, int bits, bool norm_correction) {
        if (x.ndim() != 2) bad("turbo_roundtrip: x must be [n, d]");
        const int n = (int)x.shape(0), d = (int)x.shape(1);
        const eoq::TurboRowCodec codec(d, bits);
        std::vector<uint8_t> buf(codec.code_bytes());
        std::vector<float> dec((size_t)n * d), norms(n);
        py::array_t<uint8_t> codes({(py::ssize_t)n, (py::ssize_t)d});
        for (int t = 0; t < n; t++) {
          const uint16_t h = codec.encode(x.data() + (size_t)t * d, buf.data(), norm_correction);
          codec.decode(buf.data(), h, &dec[(size_t)t * d]);
          norms[t] = eoq::fp16_to_fp32(h);
          for (int j = 0; j < d; j++) codes.mutable_data()[(size_t)t * d + j] = (uint8_t)eoq::get_bits(buf.data(), j, bits);
        }
        return py::make_tuple(farray(dec, {n, d}), codes, norms);
      },
      py::arg("x"), py::arg("bits"), py::arg("norm_correction") = false);
  m.def(
      "eigh_jacobi",
      [](f64 G) {
        if (G.ndim() != 2 || G.shape(0) != G.shape(1)) bad("eigh_jacobi: G must be square");
        const int n = (int)G.shape(0);
        py::array_t<double> w(n), V({(py::ssize_t)n, (py::ssize_t)n});
        eoq::eigh_jacobi(G.data(), n, w.mutable_data(), V.mutable_data());
        return py::make_tuple(w, V);
      },
      py::arg("G"), "Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix.");
  // The production eigensolver (Householder + implicit QL). nvec < 0: all eigenvectors from
  // eigh_tridiag; nvec >= 0: the two-phase SymEig path seal_block uses (all eigenvalues, then
  // the first nvec eigenvectors rebuilt one by one; the other columns are zero).
  m.def(
      "eigh_tridiag",
      [](f64 G, int nvec) {
        if (G.ndim() != 2 || G.shape(0) != G.shape(1)) bad("eigh_tridiag: G must be square");
        const int n = (int)G.shape(0);
        if (n < 1) bad("eigh_tridiag: G must be at least 1x1");
        if (nvec > n) bad("eigh_tridiag: nvec must be <= n");
        py::array_t<double> w(n), V({(py::ssize_t)n, (py::ssize_t)n});
        bool ok;
        if (nvec < 0) {
          ok = eoq::eigh_tridiag(G.data(), n, w.mutable_data(), V.mutable_data());
        } else {
          std::fill(V.mutable_data(), V.mutable_data() + (size_t)n * n, 0.0);
          eoq::SymEig eig;
          ok = eig.values(G.data(), n, w.mutable_data());
          for (int k = 0; k < nvec; k++) eig.vector(k, V.mutable_data() + k, n);
        }
        return py::make_tuple(w, V, ok);
      },
      py::arg("G"), py::arg("nvec") = -1);
  m.def(
      "eoptshrink",
      [](f64 lam, int p, int N) {
        if (lam.ndim() != 1 || lam.shape(0) < p) bad("eoptshrink: need at least p eigenvalues");
        const eoq::EOptShrinkResult r = eoq::eoptshrink(lam.data(), p, N);
        return py::make_tuple(r.rank, py::array_t<double>((py::ssize_t)r.phi.size(), r.phi.data()));
      },
      py::arg("lam"), py::arg("p"), py::arg("N"));
  m.def(
      "seal_block",
      [](f32 X, int bits, int rank_cap, int factor_bits, bool shrink, bool norm_correction, int norm_bits) {
        if (X.ndim() != 2) bad("seal_block: X must be [n, d]");
        eoq::SealParams sp;
        sp.norm_bits = norm_bits;
        sp.bits = bits;
        sp.rank_cap = rank_cap;
        sp.factor_bits = factor_bits;
        sp.shrink = shrink;
        sp.norm_correction = norm_correction;
        return seal_to_dict(X.data(), (int)X.shape(0), (int)X.shape(1), sp);
      },
      py::arg("X"), py::arg("bits") = 2, py::arg("rank_cap") = 3, py::arg("factor_bits") = 4, py::arg("shrink") = true,
      py::arg("norm_correction") = true, py::arg("norm_bits") = 16);

  py::class_<KVCacheTester>(m, "KVCacheTester")
      .def(py::init<const py::dict&, int, int, int, int, int>(), py::arg("params"), py::arg("n_layer"), py::arg("n_head_kv"),
           py::arg("head_dim"), py::arg("n_ctx"), py::arg("n_threads") = 2)
      .def("append", &KVCacheTester::append, py::arg("il"), py::arg("k"), py::arg("v"))
      .def("attend", &KVCacheTester::attend, py::arg("il"), py::arg("pos0"), py::arg("q"))
      .def("dequantized", &KVCacheTester::dequantized, py::arg("il"))
      .def("stats", [](KVCacheTester& t) { return py::module_::import("json").attr("loads")(t.cache().stats_json()); })
      .def("clear", &KVCacheTester::clear)
      .def_property_readonly("bytes", [](KVCacheTester& t) { return t.cache().bytes(); })
      .def_property_readonly("bits_per_entry", [](KVCacheTester& t) { return t.cache().bits_per_entry(); })
      .def_property_readonly("n_tokens", [](KVCacheTester& t) { return t.cache().n_tokens(); })
      .def_property_readonly("mode", [](KVCacheTester& t) { return t.cache().mode(); });
}

}  // namespace eoq_py
