#include "bindings/bindings.h"

namespace py = pybind11;

namespace eoq_py {
void bind_gguf(py::module_& m) {}
}  // namespace eoq_py
