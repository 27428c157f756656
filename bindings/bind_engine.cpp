// _core.Engine and _core.Sampler. Compute releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "models/llama.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

py::object value_to_py(const eoq::GGUFValue& v) {
  using T = eoq::GGUFValueType;
  switch (v.type) {
    case T::STRING: return py::str(v.s);
    case T::BOOL: return py::bool_(v.i != 0);
    case T::FLOAT32:
    case T::FLOAT64: return py::float_(v.f);
    case T::ARRAY: {
      py::list out;
      if (v.elem_type == T::STRING)
        for (const auto& s : v.arr_s) out.append(py::str(s));
      else if (v.elem_type == T::FLOAT32 || v.elem_type == T::FLOAT64)
        for (double d : v.arr_f) out.append(py::float_(d));
      else if (v.elem_type == T::BOOL)
        for (int64_t i : v.arr_i) out.append(py::bool_(i != 0));
      else
        for (int64_t i : v.arr_i) out.append(py::int_(i));
      return std::move(out);
    }
    default: return py::int_(v.i);
  }
}

}  // namespace

eoq::KVCacheParams kv_params_from_dict(const std::string& mode, const py::dict& opts) {
  eoq::KVCacheParams p;
  p.mode = mode;
  for (auto item : opts) {
    const std::string k = py::str(item.first);
    py::handle v = item.second;
    long long x;
    if (py::isinstance<py::bool_>(v)) x = v.cast<bool>() ? 1 : 0;
    else if (py::isinstance<py::int_>(v)) x = v.cast<long long>();
    else throw eoq::Error(eoq::ErrorCode::invalid_arg, "KV cache option " + k + " must be an int or a bool");
    eoq::set_kv_option(p, k, x);
  }
  return p;
}

namespace {

py::array_t<float> to_array(const std::vector<float>& v, py::ssize_t rows, py::ssize_t cols) {
  py::array_t<float> a(rows > 0 ? std::vector<py::ssize_t>{rows, cols} : std::vector<py::ssize_t>{cols});
  std::copy(v.begin(), v.begin() + (size_t)(rows > 0 ? rows : 1) * cols, a.mutable_data());
  return a;
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<eoq::Engine>(m, "Engine")
      .def(py::init([](const std::string& path, int n_ctx, int n_threads, const std::string& kv, int n_batch,
                       const py::dict& kv_options, const std::string& device) {
             eoq::EngineParams p;
             p.model_path = path;
             p.n_ctx = n_ctx;
             p.n_threads = n_threads;
             p.n_batch = n_batch;
             p.device = eoq::parse_device(device);
             p.kv = kv_params_from_dict(kv, kv_options);
             py::gil_scoped_release nogil;
             return std::make_unique<eoq::Engine>(p);
           }),
           py::arg("path"), py::arg("n_ctx") = 0, py::arg("n_threads") = 0, py::arg("kv") = "f16",
           py::arg("n_batch") = 512, py::arg("kv_options") = py::dict(), py::arg("device") = "cpu")
      .def_property_readonly("device", [](eoq::Engine& e) { return e.backend().device().name(); })
      .def_property_readonly("backend", [](eoq::Engine& e) { return e.backend().describe(); })
      .def_property_readonly("weight_bytes_per_token", [](const eoq::Engine& e) { return e.model().weight_bytes_per_token(); })
      .def_property_readonly("n_ctx", &eoq::Engine::n_ctx)
      .def_property_readonly("n_ctx_train", [](const eoq::Engine& e) { return e.config().n_ctx_train; })
      .def_property_readonly("n_vocab", &eoq::Engine::n_vocab)
      .def_property_readonly("n_past", &eoq::Engine::n_past)
      .def_property_readonly("n_threads", &eoq::Engine::n_threads)
      .def_property_readonly("load_ms", &eoq::Engine::load_ms)
      .def_property_readonly("bos", [](const eoq::Engine& e) { return e.tokenizer().bos(); })
      .def_property_readonly("eos", [](const eoq::Engine& e) { return e.tokenizer().eos(); })
      .def_property_readonly("add_bos", [](const eoq::Engine& e) { return e.tokenizer().add_bos(); })
      .def_property_readonly("arch", [](const eoq::Engine& e) { return e.config().arch; })
      .def_property_readonly("name", [](const eoq::Engine& e) { return e.file().get_str("general.name", ""); })
      .def_property_readonly("chat_template",
                             [](const eoq::Engine& e) { return e.file().get_str("tokenizer.chat_template", ""); })
      .def("metadata",
           [](const eoq::Engine& e, const std::string& key) -> py::object {
             const eoq::GGUFValue* v = e.file().find(key);
             return v ? value_to_py(*v) : py::none();
           })
      .def(
          "tokenize",
          [](const eoq::Engine& e, const std::string& text, bool add_special, bool parse_special) {
            py::gil_scoped_release nogil;
            return e.tokenizer().encode(text, add_special, parse_special);
          },
          py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = false)
      .def(
          "token_to_piece",
          [](const eoq::Engine& e, int32_t id, bool special) { return py::bytes(e.tokenizer().token_to_piece(id, special)); },
          py::arg("id"), py::arg("special") = false)
      .def(
          "detokenize",
          [](const eoq::Engine& e, const std::vector<int32_t>& ids, bool special) {
            return py::bytes(e.tokenizer().decode(ids, special));
          },
          py::arg("ids"), py::arg("special") = false)
      .def("token_text", [](const eoq::Engine& e, int32_t id) {
        if (id < 0 || id >= e.tokenizer().n_vocab())
          throw eoq::Error(eoq::ErrorCode::invalid_arg, "token id " + std::to_string(id) + " is out of range");
        return py::bytes(e.tokenizer().token_text(id));
      })
      .def("is_eog", [](const eoq::Engine& e, int32_t id) { return e.tokenizer().is_eog(id); })
      .def(
          "eval",
          [](eoq::Engine& e, const std::vector<int32_t>& tokens, bool all_logits) {
            py::gil_scoped_release nogil;
            e.eval(tokens, all_logits);
          },
          py::arg("tokens"), py::arg("all_logits") = false)
      .def("logits", [](const eoq::Engine& e) { return to_array(e.logits(), 0, e.n_vocab()); })
      .def("all_logits",
           [](const eoq::Engine& e) {
             const size_t nv = (size_t)e.n_vocab();
             return to_array(e.all_logits(), (py::ssize_t)(e.all_logits().size() / nv), (py::ssize_t)nv);
           })
      .def("reset", &eoq::Engine::reset)
      // Post-RoPE q, k, v of every layer for `tokens` run from position 0 with a temporary KV
      // cache of mode `kv` (knobs as for Engine(kv_options=...); default f16, the reference; f32
      // for exactness tests). The engine's own cache, n_past and logits are untouched. Returns a
      // dict of float32 arrays q [n_layer, n_tok, n_head, head_dim], k and v [n_layer, n_tok,
      // n_head_kv, head_dim]: what the forward pass hands to KVCache::attend / append.
      .def(
          "capture_qkv",
          [](eoq::Engine& e, const std::vector<int32_t>& tokens, const std::string& kv, const py::dict& kv_options) {
            const eoq::KVCacheParams params = kv_params_from_dict(kv, kv_options);
            const eoq::LlamaConfig& c = e.config();
            const py::ssize_t L = c.n_layer, n = (py::ssize_t)tokens.size(), hd = c.head_dim;
            if (n == 0) throw eoq::Error(eoq::ErrorCode::invalid_arg, "capture_qkv: no tokens");
            if (n > e.n_ctx())
              throw eoq::Error(eoq::ErrorCode::context_full, "capture_qkv: " + std::to_string(n) + " tokens > n_ctx " +
                                                                 std::to_string(e.n_ctx()));
            py::array_t<float> q({L, n, (py::ssize_t)c.n_head, hd});
            py::array_t<float> k({L, n, (py::ssize_t)c.n_head_kv, hd});
            py::array_t<float> v({L, n, (py::ssize_t)c.n_head_kv, hd});
            eoq::QKVCapture cap;
            cap.q = q.mutable_data();
            cap.k = k.mutable_data();
            cap.v = v.mutable_data();
            cap.n_tok = (int)n;
            {
              py::gil_scoped_release nogil;
              e.capture_qkv(tokens, cap, params);
            }
            py::dict d;
            d["q"] = q;
            d["k"] = k;
            d["v"] = v;
            return d;
          },
          py::arg("tokens"), py::arg("kv") = "f16", py::arg("kv_options") = py::dict())
      .def("compression_stats_json", [](eoq::Engine& e) { return e.kv().stats_json(); })
      .def("kv_info", [](eoq::Engine& e) {
        py::dict d;
        d["mode"] = e.kv().mode();
        d["n_tokens"] = e.kv().n_tokens();
        d["bytes"] = e.kv().bytes();
        d["bits_per_entry"] = e.kv().bits_per_entry();
        return d;
      });

  py::class_<eoq::Sampler>(m, "Sampler")
      .def(py::init([](float temperature, int top_k, float top_p, float min_p, float repeat_penalty,
                       int repeat_last_n, int64_t seed) {
             eoq::SamplerParams p;
             p.temperature = temperature;
             p.top_k = top_k;
             p.top_p = top_p;
             p.min_p = min_p;
             p.repeat_penalty = repeat_penalty;
             p.repeat_last_n = repeat_last_n;
             p.seed = seed;
             return std::make_unique<eoq::Sampler>(p);
           }),
           py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
           py::arg("repeat_penalty") = 1.0f, py::arg("repeat_last_n") = 64, py::arg("seed") = -1)
      .def_property_readonly("seed", &eoq::Sampler::seed)
      .def("sample",
           [](eoq::Sampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits) {
             if (logits.ndim() != 1) throw eoq::Error(eoq::ErrorCode::invalid_arg, "logits must be 1-D");
             return s.sample(logits.data(), (int)logits.shape(0));
           })
      .def("accept", &eoq::Sampler::accept)
      .def("reset", &eoq::Sampler::reset);
}

}  // namespace eoq_py
