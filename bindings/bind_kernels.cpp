// Test hooks for the CPU kernel table: run one kernel of a chosen ISA on NumPy arrays, so the
// suite can compare every SIMD kernel with its scalar reference.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "base/error.h"
#include "base/ggml_type.h"
#include "kernels/kernels.h"
#include "kernels/turboquant.h"
#include "kernels/quant_dot.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

using f32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using u16 = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;
using u8 = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

const eoq::CpuKernels& table(const std::string& isa) {
  if (isa == "auto") return eoq::cpu_kernels();
  if (isa == "scalar") return eoq::cpu_kernels_scalar();
  if (isa == "avx2") {
    if (const eoq::CpuKernels* k = eoq::cpu_kernels_avx2()) return *k;
    throw eoq::Error(eoq::ErrorCode::unsupported, "this CPU has no AVX2/FMA/F16C");
  }
  if (isa == "avx512vnni") {
    if (const eoq::CpuKernels* k = eoq::cpu_kernels_avx512vnni()) return *k;
    throw eoq::Error(eoq::ErrorCode::unsupported, "this CPU has no AVX512-VNNI");
  }
  throw eoq::Error(eoq::ErrorCode::invalid_arg, "unknown ISA '" + isa + "'");
}

void bad(const std::string& what) { throw eoq::Error(eoq::ErrorCode::invalid_arg, what); }

// rows [m][d] of f16 bits or of packed codes ([m][packed bytes]); q or acc [nq][d]; w [nq][m].
void check_2d(const py::array& a, py::ssize_t rows, py::ssize_t cols, const char* what) {
  if (a.ndim() != 2 || (rows >= 0 && a.shape(0) != rows) || (cols >= 0 && a.shape(1) != cols))
    bad(std::string(what) + " has the wrong shape");
}

size_t code_row_bytes(int d, int bits) {
  if (d < 1 || bits < 1 || bits > 8) bad("need d >= 1 and bits in 1..8");
  return ((size_t)d * bits + 7) / 8;
}

void same_size(py::ssize_t a, py::ssize_t b) {
  if (a != b) throw eoq::Error(eoq::ErrorCode::invalid_arg, "arrays differ in length");
}

// "Q4_K" -> GGMLType::Q4_K (names as in type_info); unknown names raise invalid_arg.
eoq::GGMLType weight_type(const std::string& name) {
  for (uint32_t k = 0; k < 64; k++) {
    const eoq::TypeInfo ti = eoq::type_info((eoq::GGMLType)k);
    if (ti.name && name == ti.name) return (eoq::GGMLType)k;
  }
  throw eoq::Error(eoq::ErrorCode::invalid_arg, "unknown GGML type name '" + name + "'");
}

// A C-contiguous buffer's bytes (bytes, bytearray, uint8 array...).
std::pair<const uint8_t*, size_t> contiguous_bytes(const py::buffer_info& b, const char* fn) {
  if (!PyBuffer_IsContiguous(b.view(), 'C')) bad(std::string(fn) + ": data must be C-contiguous");
  return {static_cast<const uint8_t*>(b.ptr), (size_t)b.size * (size_t)b.itemsize};
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def("cpu_isa", [] { return std::string(eoq::cpu_kernels().isa); });
  m.def("available_isas", [] {
    std::vector<std::string> v{"scalar"};
    if (eoq::cpu_kernels_avx2()) v.push_back("avx2");
    if (eoq::cpu_kernels_avx512vnni()) v.push_back("avx512vnni");
    return v;
  });
  m.def("k_dot_f32", [](const std::string& isa, f32 a, f32 b) {
    same_size(a.size(), b.size());
    return table(isa).dot_f32(a.data(), b.data(), a.size());
  });
  m.def("k_dot_f16_f32", [](const std::string& isa, u16 a, f32 b) {
    same_size(a.size(), b.size());
    return table(isa).dot_f16_f32(a.data(), b.data(), a.size());
  });
  m.def("k_scores_f32t_chain", [](const std::string& isa, f32 kt, f32 q) {
    check_2d(kt, q.size(), -1, "kt");
    py::array_t<float> out(kt.shape(1));
    table(isa).scores_f32t_chain(kt.data(), (int)q.size(), (int)kt.shape(1), q.data(), out.mutable_data());
    return out;
  });
  m.def("k_values_f32_chain", [](const std::string& isa, f32 v, f32 w, f32 acc) {
    check_2d(v, w.size(), acc.size(), "v");
    py::array_t<float> out(acc.size());
    std::copy(acc.data(), acc.data() + acc.size(), out.mutable_data());
    table(isa).values_f32_chain(v.data(), (int)w.size(), (int)acc.size(), w.data(), out.mutable_data());
    return out;
  });
  m.def("k_axpy_f32", [](const std::string& isa, float alpha, f32 x, f32 y) {
    same_size(x.size(), y.size());
    py::array_t<float> out(y.size());
    std::copy(y.data(), y.data() + y.size(), out.mutable_data());
    table(isa).axpy_f32(alpha, x.data(), out.mutable_data(), x.size());
    return out;
  });
  m.def("k_axpy_f16", [](const std::string& isa, float alpha, u16 x, f32 y) {
    same_size(x.size(), y.size());
    py::array_t<float> out(y.size());
    std::copy(y.data(), y.data() + y.size(), out.mutable_data());
    table(isa).axpy_f16(alpha, x.data(), out.mutable_data(), x.size());
    return out;
  });
  m.def("k_axpy_f16_acc16", [](const std::string& isa, float alpha, u16 x, u16 y) {
    same_size(x.size(), y.size());
    py::array_t<uint16_t> out(y.size());
    std::copy(y.data(), y.data() + y.size(), out.mutable_data());
    table(isa).axpy_f16_acc16(alpha, x.data(), out.mutable_data(), x.size());
    return out;
  });
  m.def("k_swiglu", [](const std::string& isa, f32 gate, f32 up) {
    same_size(gate.size(), up.size());
    py::array_t<float> out(gate.size());
    std::copy(gate.data(), gate.data() + gate.size(), out.mutable_data());
    table(isa).swiglu(out.mutable_data(), up.data(), gate.size());
    return out;
  });
  m.def("k_dot_f16_f16", [](const std::string& isa, u16 a, u16 b) {
    same_size(a.size(), b.size());
    return table(isa).dot_f16_f16(a.data(), b.data(), a.size());
  });
  m.def("k_scale_f16", [](const std::string& isa, float alpha, u16 y) {
    py::array_t<uint16_t> out(y.size());
    std::copy(y.data(), y.data() + y.size(), out.mutable_data());
    table(isa).scale_f16(alpha, out.mutable_data(), y.size());
    return out;
  });
  // Attention over m rows for nq query vectors (kernels.h scores_* / values_*).
  m.def("k_scores_f16", [](const std::string& isa, u16 rows, f32 q) {
    check_2d(rows, -1, -1, "rows");
    const int64_t mm = rows.shape(0);
    const int d = (int)rows.shape(1);
    check_2d(q, -1, d, "q");
    const int nq = (int)q.shape(0);
    py::array_t<float> out({(py::ssize_t)nq, (py::ssize_t)mm});
    table(isa).scores_f16(rows.data(), mm, d, q.data(), nq, out.mutable_data());
    return out;
  });
  m.def("k_values_f16", [](const std::string& isa, u16 rows, f32 w, f32 acc) {
    check_2d(rows, -1, -1, "rows");
    const int64_t mm = rows.shape(0);
    const int d = (int)rows.shape(1);
    check_2d(w, -1, mm, "w");
    check_2d(acc, w.shape(0), d, "acc");
    py::array_t<float> out({acc.shape(0), acc.shape(1)});
    std::copy(acc.data(), acc.data() + acc.size(), out.mutable_data());
    table(isa).values_f16(rows.data(), mm, d, w.data(), (int)w.shape(0), out.mutable_data());
    return out;
  });
  // Row norms: f16 bits, one per row (None: all 1.0), times `scale` (kernels.h scores_codes).
  auto row_norms = [](const py::object& norms, int64_t mm) {
    std::vector<uint16_t> nv((size_t)mm, 0x3c00);
    if (!norms.is_none()) {
      u16 a = norms.cast<u16>();
      if (a.ndim() != 1 || a.shape(0) != mm) bad("norms must hold one f16 value per row");
      std::copy(a.data(), a.data() + mm, nv.begin());
    }
    return nv;
  };
  // scores_codes (exact) or scores_codes_q8 (kernels.h: may round q and centroids to int8)
  for (const bool q8 : {false, true}) {
    m.def(q8 ? "k_scores_codes_q8" : "k_scores_codes", [row_norms, q8](const std::string& isa, u8 codes, int d, int bits,
                                                                       f32 centroids, f32 q, py::object norms, float scale) {
      check_2d(codes, -1, (py::ssize_t)code_row_bytes(d, bits), "codes");
      if (centroids.size() != (py::ssize_t)1 << bits) bad("centroids must hold 2^bits values");
      check_2d(q, -1, d, "q");
      const int64_t mm = codes.shape(0);
      const int nq = (int)q.shape(0);
      const std::vector<uint16_t> nv = row_norms(norms, mm);
      py::array_t<float> out({(py::ssize_t)nq, (py::ssize_t)mm});
      const eoq::CpuKernels& k = table(isa);
      (q8 ? k.scores_codes_q8 : k.scores_codes)(codes.data(), mm, d, bits, centroids.data(), nv.data(), scale,
                                                q.data(), nq, out.mutable_data());
      return out;
    }, py::arg("isa"), py::arg("codes"), py::arg("d"), py::arg("bits"), py::arg("centroids"), py::arg("q"),
       py::arg("norms") = py::none(), py::arg("scale") = 1.0f);
  }
  m.def("k_values_codes", [row_norms](const std::string& isa, u8 codes, int d, int bits, f32 centroids, f32 w,
                                      f32 acc, py::object norms, float scale) {
    check_2d(codes, -1, (py::ssize_t)code_row_bytes(d, bits), "codes");
    if (centroids.size() != (py::ssize_t)1 << bits) bad("centroids must hold 2^bits values");
    const int64_t mm = codes.shape(0);
    check_2d(w, -1, mm, "w");
    check_2d(acc, w.shape(0), d, "acc");
    const std::vector<uint16_t> nv = row_norms(norms, mm);
    py::array_t<float> out({acc.shape(0), acc.shape(1)});
    std::copy(acc.data(), acc.data() + acc.size(), out.mutable_data());
    table(isa).values_codes(codes.data(), mm, d, bits, centroids.data(), nv.data(), scale, w.data(),
                            (int)w.shape(0), out.mutable_data());
    return out;
  }, py::arg("isa"), py::arg("codes"), py::arg("d"), py::arg("bits"), py::arg("centroids"), py::arg("w"),
     py::arg("acc"), py::arg("norms") = py::none(), py::arg("scale") = 1.0f);
  // out[j] = table[field j of the packed stream], j < n (kernels.h decode_codes)
  m.def("k_decode_codes", [](const std::string& isa, u8 codes, int64_t n, int bits, f32 tab) {
    if (n < 0) bad("n must be >= 0");
    if ((py::ssize_t)code_row_bytes((int)std::max<int64_t>(1, n), bits) > codes.size() && n > 0)
      bad("codes hold fewer than n fields");
    if (tab.size() != (py::ssize_t)1 << bits) bad("table must hold 2^bits values");
    py::array_t<float> out(n);
    table(isa).decode_codes(codes.data(), n, bits, tab.data(), out.mutable_data());
    return out;
  });
  // out[t] = the f16 bits of 8-bit log-domain norm codes[t] under shift (kernels.h decode_log_norms)
  m.def("k_decode_log_norms", [](const std::string& isa, u8 codes, int shift) {
    if (shift < eoq::kLogNormMinShift || shift > eoq::kLogNormMaxShift) bad("shift must be in [-6, 15]");
    py::array_t<uint16_t> out(codes.size());
    table(isa).decode_log_norms(codes.data(), codes.size(), shift, out.mutable_data());
    return out;
  });
  m.def("k_max_f32", [](const std::string& isa, f32 x) { return table(isa).max_f32(x.data(), x.size()); });
  // x[i] = exp(x[i] - mx); returns (x, Σ x).
  m.def("k_softmax_exp", [](const std::string& isa, f32 x, float mx) {
    py::array_t<float> out(x.size());
    std::copy(x.data(), x.data() + x.size(), out.mutable_data());
    const float s = table(isa).softmax_exp(out.mutable_data(), x.size(), mx);
    return py::make_tuple(out, s);
  });
  // One row of n values of a weight type (raw block bytes: bytes, bytearray, uint8 array...).
  m.def(
      "k_dequantize_row",
      [](const std::string& isa, const std::string& type_name, py::buffer data, int64_t n) {
        const eoq::CpuKernels& k = table(isa);
        const eoq::GGMLType t = weight_type(type_name);
        const eoq::TypeInfo ti = eoq::type_info(t);
        if (!ti.supported)
          throw eoq::Error(eoq::ErrorCode::unsupported, "k_dequantize_row: type " + type_name + " is not supported");
        if (n < 0 || n % ti.block_size != 0)
          throw eoq::Error(eoq::ErrorCode::invalid_arg, "k_dequantize_row: n = " + std::to_string(n) +
                                                            " is not a non-negative multiple of the " +
                                                            type_name + " block size");
        const py::buffer_info b = data.request();
        if (!PyBuffer_IsContiguous(b.view(), 'C'))
          throw eoq::Error(eoq::ErrorCode::invalid_arg, "k_dequantize_row: data must be C-contiguous");
        const size_t bytes = (size_t)b.size * (size_t)b.itemsize, want = eoq::row_size(t, n);
        if (bytes != want)
          throw eoq::Error(eoq::ErrorCode::invalid_arg, "k_dequantize_row: " + std::to_string(n) + " " + type_name +
                                                            " values take " + std::to_string(want) +
                                                            " bytes, got " + std::to_string(bytes));
        py::array_t<float> out((py::ssize_t)n);
        k.dequantize_row(t, b.ptr, out.mutable_data(), n);
        return out;
      },
      py::arg("isa"), py::arg("type_name"), py::arg("data"), py::arg("n"),
      "dequantize one row of n values with the chosen ISA's kernel");

  // Weight × activation products (kernels/quant_dot.h).
  m.def(
      "vec_dot_type", [](const std::string& w) { return std::string(eoq::type_name(eoq::vec_dot_type(weight_type(w)))); },
      "the activation format a weight type's dot products take");
  m.def(
      "act_row_bytes", [](const std::string& act, int64_t n) { return eoq::act_row_bytes(weight_type(act), n); },
      "bytes of one activation row of n values");
  m.def(
      "k_quantize_act",
      [](const std::string& isa, const std::string& act, f32 x) {
        const eoq::CpuKernels& k = table(isa);
        const eoq::GGMLType t = weight_type(act);
        std::string out(eoq::act_row_bytes(t, x.size()), '\0');
        k.quantize_act(t, x.data(), &out[0], x.size());
        return py::bytes(out);
      },
      py::arg("isa"), py::arg("act"), py::arg("x"), "one row of floats in an activation format (raw block bytes)");
  m.def(
      "k_vec_dot",
      [](const std::string& isa, const std::string& wtype, py::buffer w, int nr, py::buffer a, int nt, int64_t n) {
        const eoq::CpuKernels& k = table(isa);
        const eoq::GGMLType t = weight_type(wtype);
        const eoq::GGMLType act = eoq::vec_dot_type(t);
        if (nr < 0 || nt < 0) bad("k_vec_dot: nr and nt must be >= 0");
        const size_t wrow = eoq::row_size(t, n), arow = eoq::act_row_bytes(act, n);
        if (wrow == 0 && n != 0) bad("k_vec_dot: n is not a multiple of the weight block size");
        const py::buffer_info wb = w.request(), ab = a.request();
        const auto wd = contiguous_bytes(wb, "k_vec_dot"), ad = contiguous_bytes(ab, "k_vec_dot");
        if (wd.second != wrow * (size_t)nr) bad("k_vec_dot: weights must be nr rows of " + std::to_string(wrow) + " bytes");
        if (ad.second != arow * (size_t)nt) bad("k_vec_dot: activations must be nt rows of " + std::to_string(arow) + " bytes");
        py::array_t<float> out({(py::ssize_t)nt, (py::ssize_t)nr});
        k.vec_dot(t, n, wd.first, wrow, nr, ad.first, arow, nt, out.mutable_data(), nr);
        return out;
      },
      py::arg("isa"), py::arg("wtype"), py::arg("w"), py::arg("nr"), py::arg("a"), py::arg("nt"), py::arg("n"),
      "[nt, nr] dot products of nr weight rows with nt activation rows (from k_quantize_act)");
}

}  // namespace eoq_py
