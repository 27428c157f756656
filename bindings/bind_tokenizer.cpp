// _core.Tokenizer, _core.Utf8Stream, _core.pre_tokenize: thin wrappers over engine/tokenizer.h.
// Texts cross as str (UTF-8); token pieces cross as bytes, since a piece may hold part of a
// character.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bindings/bindings.h"
#include "engine/gguf.h"
#include "engine/pretokenize.h"
#include "engine/tokenizer.h"

namespace py = pybind11;

namespace eoq_py {

namespace {
// Python str -> UTF-8 bytes. A str holding lone surrogates cannot be encoded: report it as
// invalid UTF-8 like any other bad text, rather than as a UnicodeEncodeError.
std::string utf8_of(const py::handle& s) {
  if (PyBytes_Check(s.ptr())) return std::string(py::reinterpret_borrow<py::bytes>(s));
  if (!PyUnicode_Check(s.ptr())) throw py::type_error("text must be str or bytes");
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
  if (!p) {
    PyErr_Clear();
    throw eoq::Error(eoq::ErrorCode::invalid_utf8, "text cannot be encoded as UTF-8 (lone surrogate?)");
  }
  return std::string(p, (size_t)n);
}

// Above this many bytes encode() releases the GIL (below it the release costs more than it saves).
constexpr size_t kReleaseGilBytes = 4096;
}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<eoq::Tokenizer, std::shared_ptr<eoq::Tokenizer>>(m, "Tokenizer",
      "Tokenizer built from a GGUF file's tokenizer.ggml.* metadata.")
      .def(py::init([](const std::string& path) {
             // The GGUFFile lives only while the vocabulary is copied out of it.
             std::unique_ptr<eoq::GGUFFile> f(new eoq::GGUFFile(path));
             return std::make_shared<eoq::Tokenizer>(*f);
           }),
           py::arg("path"))
      .def(
          "encode",
          [](const eoq::Tokenizer& t, py::object text, bool add_special, bool parse_special) {
            const std::string s = utf8_of(text);
            if (s.size() < kReleaseGilBytes) return t.encode(s, add_special, parse_special);
            py::gil_scoped_release nogil;
            return t.encode(s, add_special, parse_special);
          },
          py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = false,
          "UTF-8 text (str, or bytes) -> token ids. Raises EoqError(code='invalid_utf8') on bad text.")
      .def(
          "token_to_piece",
          [](const eoq::Tokenizer& t, int32_t id, bool special) { return py::bytes(t.token_to_piece(id, special)); },
          py::arg("id"), py::arg("special") = false)
      .def(
          "decode",
          [](const eoq::Tokenizer& t, const std::vector<int32_t>& ids, bool special, bool remove_leading_space) {
            return py::bytes(t.decode(ids, special, remove_leading_space));
          },
          py::arg("ids"), py::arg("special") = false, py::arg("remove_leading_space") = true)
      .def("is_eog", &eoq::Tokenizer::is_eog, py::arg("id"))
      .def("token_text", [](const eoq::Tokenizer& t, int32_t id) { return py::bytes(t.token_text(id)); },
           py::arg("id"))
      .def("token_type", [](const eoq::Tokenizer& t, int32_t id) { return (int)t.token_type(id); }, py::arg("id"))
      .def_property_readonly("n_vocab", &eoq::Tokenizer::n_vocab)
      .def_property_readonly("bos", &eoq::Tokenizer::bos)
      .def_property_readonly("eos", &eoq::Tokenizer::eos)
      .def_property_readonly("add_bos", &eoq::Tokenizer::add_bos)
      .def_property_readonly("add_eos", &eoq::Tokenizer::add_eos)
      .def_property_readonly("add_space_prefix", &eoq::Tokenizer::add_space_prefix)
      .def_property_readonly("model", &eoq::Tokenizer::model)
      .def_property_readonly("pre", &eoq::Tokenizer::pre)
      .def_property_readonly("eog_ids", &eoq::Tokenizer::eog_ids);

  py::class_<eoq::Utf8Stream>(m, "Utf8Stream",
      "Joins token pieces into text without ever splitting a character.")
      .def(py::init<>())
      .def("push", [](eoq::Utf8Stream& s, py::bytes b) { return py::str(s.push(std::string(b))); },
           py::arg("data"))
      .def("flush", [](eoq::Utf8Stream& s) { return py::str(s.flush()); });

  m.def(
      "pre_tokenize",
      [](const std::string& pre, py::object text) { return eoq::pre_tokenize(pre, utf8_of(text)); },
      py::arg("pre"), py::arg("text"),
      "Split text with the pre-tokenizer named by a tokenizer.ggml.pre value (for tests).");
  m.def("utf8_valid", [](py::bytes b) { return eoq::utf8_valid(std::string(b)); }, py::arg("data"));
}

}  // namespace eoq_py
