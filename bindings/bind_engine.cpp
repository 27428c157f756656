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

// A sequence of an Engine's context, as Python holds it (keep_alive keeps the Engine).
struct SeqRef {
  eoq::Engine* e;
  int i;
  eoq::Sequence& seq() const { return e->context().seq(i); }
};

// The C++ progress callback of an eval: after each full prefill chunk, on the evaluating
// thread, it takes the GIL, lets Python handle a pending signal (Ctrl-C raises
// KeyboardInterrupt there, which stops the eval at that chunk) and calls `progress(done, total)`
// when given (a falsy return other than None stops it too).
eoq::ProgressFn progress_fn(const py::object& progress) {
  return [progress](int done, int total) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (progress.is_none()) return true;
    py::object r = progress(done, total);
    return r.is_none() || py::bool_(r);
  };
}

// What an Engine and its sequences share: the model's facts and the tokenizer. E(obj) gives
// the eoq::Engine.
template <typename Cls, typename E>
void def_model_facts(Cls& cls, E engine_of) {
  using T = typename Cls::type;
  cls.def_property_readonly("device", [engine_of](T& o) { return engine_of(o).backend().device().name(); })
      .def_property_readonly("backend", [engine_of](T& o) { return engine_of(o).backend().describe(); })
      .def_property_readonly("weight_bytes_per_token", [engine_of](T& o) { return engine_of(o).model().weight_bytes_per_token(); })
      .def_property_readonly("n_ctx", [engine_of](T& o) { return engine_of(o).n_ctx(); })
      .def_property_readonly("n_ctx_train", [engine_of](T& o) { return engine_of(o).config().n_ctx_train; })
      .def_property_readonly("n_vocab", [engine_of](T& o) { return engine_of(o).n_vocab(); })
      .def_property_readonly("n_seq", [engine_of](T& o) { return engine_of(o).context().n_seq(); })
      .def_property_readonly("n_threads", [engine_of](T& o) { return engine_of(o).n_threads(); })
      .def_property_readonly("load_ms", [engine_of](T& o) { return engine_of(o).load_ms(); })
      .def_property_readonly("bos", [engine_of](T& o) { return engine_of(o).tokenizer().bos(); })
      .def_property_readonly("eos", [engine_of](T& o) { return engine_of(o).tokenizer().eos(); })
      .def_property_readonly("add_bos", [engine_of](T& o) { return engine_of(o).tokenizer().add_bos(); })
      .def_property_readonly("arch", [engine_of](T& o) { return engine_of(o).config().arch; })
      .def_property_readonly("name", [engine_of](T& o) { return engine_of(o).file().get_str("general.name", ""); })
      .def_property_readonly("chat_template",
                             [engine_of](T& o) { return engine_of(o).file().get_str("tokenizer.chat_template", ""); })
      .def("metadata",
           [engine_of](T& o, const std::string& key) -> py::object {
             const eoq::GGUFValue* v = engine_of(o).file().find(key);
             return v ? value_to_py(*v) : py::none();
           })
      .def(
          "tokenize",
          [engine_of](T& o, const std::string& text, bool add_special, bool parse_special) {
            eoq::Engine& e = engine_of(o);
            py::gil_scoped_release nogil;
            return e.tokenizer().encode(text, add_special, parse_special);
          },
          py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = false)
      .def(
          "token_to_piece",
          [engine_of](T& o, int32_t id, bool special) { return py::bytes(engine_of(o).tokenizer().token_to_piece(id, special)); },
          py::arg("id"), py::arg("special") = false)
      .def(
          "detokenize",
          [engine_of](T& o, const std::vector<int32_t>& ids, bool special) {
            return py::bytes(engine_of(o).tokenizer().decode(ids, special));
          },
          py::arg("ids"), py::arg("special") = false)
      .def("token_text",
           [engine_of](T& o, int32_t id) {
             const eoq::Tokenizer& t = engine_of(o).tokenizer();
             if (id < 0 || id >= t.n_vocab())
               throw eoq::Error(eoq::ErrorCode::invalid_arg, "token id " + std::to_string(id) + " is out of range");
             return py::bytes(t.token_text(id));
           })
      .def("is_eog", [engine_of](T& o, int32_t id) { return engine_of(o).tokenizer().is_eog(id); });
}

// What acts on one sequence (S(obj) gives the context and the index): eval, logits, the cache.
template <typename Cls, typename S>
void def_sequence_ops(Cls& cls, S seq_of) {
  using T = typename Cls::type;
  cls.def_property_readonly("n_past", [seq_of](T& o) { auto [c, i] = seq_of(o); return c->seq(i).n_past(); })
      .def_property_readonly("seq_index", [seq_of](T& o) { return seq_of(o).second; })
      .def(
          "eval",
          [seq_of](T& o, const std::vector<int32_t>& tokens, bool all_logits, const py::object& progress) {
            auto [c, i] = seq_of(o);
            const eoq::ProgressFn fn = progress_fn(progress);
            py::gil_scoped_release nogil;
            return c->eval(i, tokens, all_logits, fn);
          },
          py::arg("tokens"), py::arg("all_logits") = false, py::arg("progress") = py::none(),
          "Evaluates tokens at n_past; False when progress (or Ctrl-C) stopped it after a chunk.")
      .def("logits", [seq_of](T& o) {
        auto [c, i] = seq_of(o);
        return to_array(c->seq(i).logits(), 0, (py::ssize_t)c->seq(i).logits().size());
      })
      .def("all_logits",
           [seq_of](T& o) {
             auto [c, i] = seq_of(o);
             const eoq::Sequence& s = c->seq(i);
             const size_t nv = s.logits().size();
             return to_array(s.all_logits(), (py::ssize_t)(s.all_logits().size() / nv), (py::ssize_t)nv);
           })
      .def("reset",
           [seq_of](T& o) {
             auto [c, i] = seq_of(o);
             py::gil_scoped_release nogil;
             c->reset(i);
           })
      .def(
          "truncate",
          [seq_of](T& o, int n) {
            auto [c, i] = seq_of(o);
            py::gil_scoped_release nogil;
            return c->truncate(i, n);
          },
          py::arg("n"), "Keeps the first n tokens; returns those kept (a compressed cache: its last block boundary).")
      .def(
          "reuse_prefix",
          [seq_of](T& o, const std::vector<int32_t>& tokens) {
            auto [c, i] = seq_of(o);
            py::gil_scoped_release nogil;
            return c->reuse_prefix(i, tokens);
          },
          py::arg("tokens"), "Keeps the longest common prefix with tokens (never all of them); returns its length.")
      .def("set_active", [seq_of](T& o, bool a) { auto [c, i] = seq_of(o); c->set_active(i, a); })
      .def(
          "save_state",
          [seq_of](T& o, const std::string& path) {
            auto [c, i] = seq_of(o);
            py::gil_scoped_release nogil;
            return c->save_state(i, path);
          },
          py::arg("path"), "Writes the sequence's tokens, logits and cache to path; returns the bytes written.")
      .def(
          "load_state",
          [seq_of](T& o, const std::string& path) {
            auto [c, i] = seq_of(o);
            py::gil_scoped_release nogil;
            c->load_state(i, path);
          },
          py::arg("path"), "Replaces the sequence's contents from a state file (validated; a failure empties it).")
      .def("cached_tokens", [seq_of](T& o) { auto [c, i] = seq_of(o); return c->seq(i).tokens(); })
      .def("compression_stats_json", [seq_of](T& o) { auto [c, i] = seq_of(o); return c->seq(i).kv().stats_json(); })
      .def("kv_info", [seq_of](T& o) {
        auto [c, i] = seq_of(o);
        eoq::KVCache& kv = c->seq(i).kv();
        py::dict d;
        d["mode"] = kv.mode();
        d["n_tokens"] = kv.n_tokens();
        d["bytes"] = kv.bytes();
        d["bits_per_entry"] = kv.bits_per_entry();
        return d;
      });
}

void bind_engine(py::module_& m) {
  // "eoq2:ring=0:k_bits=3" -> ("eoq2", {knob: value, ...}) by the C++ parser (every knob, as
  // Engine(kv_options=...) takes them; Error(invalid_arg) for a malformed spec).
  m.def("parse_kv_spec", [](const std::string& spec) {
    const eoq::KVCacheParams p = eoq::parse_kv_spec(spec);
    py::dict d;
    d["k_bits"] = p.k_bits;
    d["v_bits"] = p.v_bits;
    d["rank_cap"] = p.rank_cap;
    d["v_rank_cap"] = p.v_rank_cap;
    d["factor_bits"] = p.factor_bits;
    d["shrink"] = p.shrink;
    d["block"] = p.block;
    d["ring"] = p.ring;
    d["sinks"] = p.sinks;
    d["boundary_layers"] = p.boundary_layers;
    d["boundary_bits"] = p.boundary_bits;
    d["norm_correction"] = p.norm_correction;
    d["norm_bits"] = p.norm_bits;
    d["tail_bits"] = p.tail_bits;
    d["v_tail_bits"] = p.v_tail_bits;
    d["window"] = p.window;
    d["k_adapt"] = p.k_adapt;
    d["exact_scores"] = p.exact_scores;
    d["seed"] = (long long)p.seed;
    return py::make_tuple(p.mode, d);
  });

  py::class_<eoq::Engine> engine(m, "Engine");
  engine.def(py::init([](const std::string& path, int n_ctx, int n_threads, const std::string& kv, int n_batch,
                         const py::dict& kv_options, const std::string& device, int n_seq) {
               eoq::EngineParams p;
               p.model_path = path;
               p.n_ctx = n_ctx;
               p.n_threads = n_threads;
               p.n_batch = n_batch;
               p.n_seq = n_seq;
               p.device = eoq::parse_device(device);
               p.kv = kv_params_from_dict(kv, kv_options);
               py::gil_scoped_release nogil;
               return std::make_unique<eoq::Engine>(p);
             }),
             py::arg("path"), py::arg("n_ctx") = 0, py::arg("n_threads") = 0, py::arg("kv") = "f16",
             py::arg("n_batch") = 512, py::arg("kv_options") = py::dict(), py::arg("device") = "cpu", py::arg("n_seq") = 1);
  def_model_facts(engine, [](eoq::Engine& e) -> eoq::Engine& { return e; });
  def_sequence_ops(engine, [](eoq::Engine& e) { return std::make_pair(&e.context(), 0); });
  engine
      .def("step_stats",
           [](eoq::Engine& e) {
             const eoq::Context::StepStats st = e.context().step_stats();
             py::dict d;
             d["steps"] = st.steps;
             d["tokens"] = st.tokens;
             d["segments"] = st.segments;
             d["max_segments"] = st.max_segments;
             return d;
           })
      .def(
          "sequence", [](eoq::Engine& e, int i) { e.context().seq(i); return SeqRef{&e, i}; }, py::arg("i"),
          py::keep_alive<0, 1>())
      .def(
          "eval_batch",
          [](eoq::Engine& e, const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& tokens) {
            py::gil_scoped_release nogil;
            e.context().eval_batch(seqs, tokens);
          },
          py::arg("seqs"), py::arg("tokens"), "One step: tokens[k] on sequence seqs[k], all together.")
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
          py::arg("tokens"), py::arg("kv") = "f16", py::arg("kv_options") = py::dict());

  // One sequence of an Engine's context: the Engine's model facts and its own cache and logits.
  py::class_<SeqRef> seq(m, "Sequence");
  def_model_facts(seq, [](SeqRef& s) -> eoq::Engine& { return *s.e; });
  def_sequence_ops(seq, [](SeqRef& s) { return std::make_pair(&s.e->context(), s.i); });

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
