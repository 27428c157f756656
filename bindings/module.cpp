#include <pybind11/pybind11.h>

#include <cstring>

#include "bindings/bindings.h"
#include "base/error.h"

namespace py = pybind11;

namespace eoq_py {

// eoq::Error -> eoq._core.EoqError (subclass of ValueError so callers can catch either);
// its .code attribute carries the ErrorCode name.
void bind_errors(py::module_& m) {
  static PyObject* exc = PyErr_NewException("eoq._core.EoqError", PyExc_ValueError, nullptr);
  m.add_object("EoqError", py::handle(exc));
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const eoq::Error& e) {
      static const char* names[] = {"ok", "io", "format", "unsupported", "invalid_arg",
                                    "context_full", "invalid_utf8", "internal"};
      const int c = (int)e.code();
      // Messages may quote bytes from an untrusted file: decode with replacement, never fail.
      const char* msg = e.what();
      py::object text = py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(msg, (Py_ssize_t)std::strlen(msg), "replace"));
      py::object inst = py::reinterpret_borrow<py::object>(exc)(text);
      inst.attr("code") = py::str(c >= 0 && c < 8 ? names[c] : "internal");
      PyErr_SetObject(exc, inst.ptr());
    }
  });
}

}  // namespace eoq_py

PYBIND11_MODULE(_core, m) {
  m.doc() = "eoq C++ core (thin bindings; see the eoq package for the Python API)";
  eoq_py::bind_errors(m);
  eoq_py::bind_gguf(m);
  eoq_py::bind_tokenizer(m);
  eoq_py::bind_engine(m);
  eoq_py::bind_kernels(m);
  eoq_py::bind_kv(m);
  eoq_py::bind_cuda(m);
}
