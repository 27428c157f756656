// Python view of the GGUF reader and the reference weight kernels:
//   _core.GGUFFile(path): version, alignment, file_size, path, metadata (dict), tensors
//     (list of dicts), dequantize(name | index) -> float32 array in numpy order (ne
//     reversed), raw(name | index) -> bytes, require_supported(name | index),
//     get_str/get_int/get_float/get_bool/has (the typed getters)
//   _core.dequantize_row(type_name, data, n) -> float32[n]
//   _core.vec_dot(type_name, data, x) -> float
//   _core.quantize_row_q8_0(x) -> uint8[n/32*34]
// Bad arguments raise EoqError (eoq::Error(invalid_arg)), translated in module.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings/bindings.h"
#include "engine/gguf.h"
#include "kernels/quants.h"

namespace py = pybind11;

namespace eoq_py {

namespace {

using eoq::ErrorCode;
using eoq::GGMLType;
using eoq::GGUFValueType;

// Strings in a GGUF file are bytes that should be UTF-8; invalid sequences become U+FFFD
// rather than raising UnicodeDecodeError from a property getter.
py::str to_py_str(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), (Py_ssize_t)s.size(), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

py::object int_to_py(GGUFValueType t, int64_t i) {
  if (t == GGUFValueType::BOOL) return py::bool_(i != 0);
  if (t == GGUFValueType::UINT64) return py::int_((uint64_t)i);  // stored as its bit pattern
  return py::int_(i);
}

py::object value_to_py(const eoq::GGUFValue& v) {
  switch (v.type) {
    case GGUFValueType::STRING: return to_py_str(v.s);
    case GGUFValueType::FLOAT32: case GGUFValueType::FLOAT64: return py::float_(v.f);
    case GGUFValueType::ARRAY: {
      py::list out(v.arr_len);
      if (v.elem_type == GGUFValueType::STRING) {
        for (size_t k = 0; k < v.arr_s.size(); k++) out[k] = to_py_str(v.arr_s[k]);
      } else if (v.elem_type == GGUFValueType::FLOAT32 || v.elem_type == GGUFValueType::FLOAT64) {
        for (size_t k = 0; k < v.arr_f.size(); k++) out[k] = py::float_(v.arr_f[k]);
      } else {
        for (size_t k = 0; k < v.arr_i.size(); k++) out[k] = int_to_py(v.elem_type, v.arr_i[k]);
      }
      return std::move(out);
    }
    default: return int_to_py(v.type, v.i);
  }
}

// "Q4_K" -> GGMLType::Q4_K; unknown names raise EoqError(invalid_arg).
GGMLType type_from_name(const std::string& name) {
  for (uint32_t k = 0; k < 64; k++) {
    const eoq::TypeInfo ti = eoq::type_info((GGMLType)k);
    if (ti.name && name == ti.name) return (GGMLType)k;
  }
  eoq::fail(ErrorCode::invalid_arg, "unknown GGML type name '" + name + "'");
}

std::string type_label(GGMLType t) {
  const eoq::TypeInfo ti = eoq::type_info(t);
  return ti.name ? std::string(ti.name) : "type " + std::to_string((uint32_t)t);
}

// A C-contiguous read-only byte view of any buffer-protocol object (bytes, bytearray,
// memoryview, numpy arrays), released on scope exit.
class ByteView {
 public:
  explicit ByteView(py::handle obj) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) {
      PyErr_Clear();
      eoq::fail(ErrorCode::invalid_arg, "data must be a C-contiguous bytes-like object");
    }
  }
  ~ByteView() { PyBuffer_Release(&view_); }
  ByteView(const ByteView&) = delete;
  ByteView& operator=(const ByteView&) = delete;
  const uint8_t* data() const { return static_cast<const uint8_t*>(view_.buf); }
  size_t size() const { return (size_t)view_.len; }

 private:
  Py_buffer view_{};
};

// Checks that `bytes` holds exactly one row of n values of type t.
void check_row_args(GGMLType t, size_t bytes, int64_t n, const char* fn) {
  const eoq::TypeInfo ti = eoq::type_info(t);
  if (!ti.supported)
    eoq::fail(ErrorCode::unsupported, std::string(fn) + ": type " + type_label(t) + " is not supported");
  if (n < 0 || n % ti.block_size != 0)
    eoq::fail(ErrorCode::invalid_arg, std::string(fn) + ": n = " + std::to_string(n) +
                                          " is not a non-negative multiple of the " + ti.name +
                                          " block size " + std::to_string(ti.block_size));
  const size_t want = eoq::row_size(t, n);
  if (bytes != want)
    eoq::fail(ErrorCode::invalid_arg, std::string(fn) + ": " + std::to_string(n) + " " + ti.name +
                                          " values take " + std::to_string(want) + " bytes, got " +
                                          std::to_string(bytes));
}

const eoq::GGUFTensor& tensor_or_throw(const eoq::GGUFFile& f, const std::string& name) {
  const eoq::GGUFTensor* t = f.find_tensor(name);
  if (!t) eoq::fail(ErrorCode::invalid_arg, "no tensor named '" + name + "'");
  return *t;
}

// Tensors by position: names read from a damaged file may not be valid UTF-8, so a Python
// str cannot always name them.
const eoq::GGUFTensor& tensor_at(const eoq::GGUFFile& f, int64_t index) {
  const int64_t n = (int64_t)f.tensors().size();
  if (index < 0 || index >= n)
    eoq::fail(ErrorCode::invalid_arg, "tensor index " + std::to_string(index) + " out of range (" +
                                          std::to_string(n) + " tensors)");
  return f.tensors()[(size_t)index];
}

py::bytes raw_bytes(const eoq::GGUFTensor& t) {
  return py::bytes(reinterpret_cast<const char*>(t.data), t.nbytes);
}

py::array_t<float> dequantize_tensor(const eoq::GGUFFile& f, const eoq::GGUFTensor& t) {
  f.require_supported(t);
  std::vector<py::ssize_t> shape;
  for (int d = t.n_dims - 1; d >= 0; d--) shape.push_back((py::ssize_t)t.ne[d]);
  py::array_t<float> out(shape);
  float* dst = out.mutable_data();
  const int64_t ne0 = t.ne[0], rows = t.n_rows();
  const size_t rb = t.row_bytes();
  {
    py::gil_scoped_release nogil;
    for (int64_t r = 0; r < rows; r++) eoq::dequantize_row_ref(t.type, t.data + (size_t)r * rb, dst + r * ne0, ne0);
  }
  return out;
}

py::dict tensor_dict(const eoq::GGUFTensor& t) {
  py::dict d;
  d["name"] = to_py_str(t.name);
  d["type"] = type_label(t.type);
  d["type_id"] = (uint32_t)t.type;
  py::list shape;
  for (int k = 0; k < t.n_dims; k++) shape.append(t.ne[k]);
  d["shape"] = shape;
  d["offset"] = t.offset;
  d["nbytes"] = t.nbytes;
  return d;
}

std::string path_arg(py::handle p) {
  // str, bytes or os.PathLike
  return py::module_::import("os").attr("fspath")(p).cast<std::string>();
}

}  // namespace

void bind_gguf(py::module_& m) {
  py::class_<eoq::GGUFFile>(m, "GGUFFile", "A memory-mapped GGUF file (v2/v3): metadata and tensor table.")
      .def(py::init([](py::handle path) {
             const std::string p = path_arg(path);
             py::gil_scoped_release nogil;
             return new eoq::GGUFFile(p);
           }),
           py::arg("path"))
      .def_property_readonly("version", &eoq::GGUFFile::version)
      .def_property_readonly("alignment", &eoq::GGUFFile::alignment)
      .def_property_readonly("file_size", &eoq::GGUFFile::file_size)
      .def_property_readonly("path", &eoq::GGUFFile::path)
      .def_property_readonly(
          "metadata",
          [](const eoq::GGUFFile& f) {
            py::dict d;
            for (const auto& kv : f.metadata()) d[to_py_str(kv.first)] = value_to_py(kv.second);
            return d;
          },
          "dict key -> int/float/bool/str/list (a fresh dict on every access)")
      .def_property_readonly(
          "tensors",
          [](const eoq::GGUFFile& f) {
            py::list l;
            for (const auto& t : f.tensors()) l.append(tensor_dict(t));
            return l;
          },
          "list of dicts: name, type, type_id, shape (GGUF order, ne0 first), offset "
          "(relative to the data section), nbytes")
      // Typed metadata getters (the C++ API the model loader uses): without a default a
      // missing key raises; a key of the wrong type always raises.
      .def("get_str", [](const eoq::GGUFFile& f, const std::string& key, py::object def) -> py::object {
             if (def.is_none()) return to_py_str(f.get_str(key));
             return to_py_str(f.get_str(key, def.cast<std::string>()));
           }, py::arg("key"), py::arg("default") = py::none())
      .def("get_int", [](const eoq::GGUFFile& f, const std::string& key, py::object def) {
             return def.is_none() ? f.get_int(key) : f.get_int(key, def.cast<int64_t>());
           }, py::arg("key"), py::arg("default") = py::none())
      .def("get_float", [](const eoq::GGUFFile& f, const std::string& key, py::object def) {
             return def.is_none() ? f.get_float(key) : f.get_float(key, def.cast<double>());
           }, py::arg("key"), py::arg("default") = py::none())
      .def("get_bool", [](const eoq::GGUFFile& f, const std::string& key, bool def) { return f.get_bool(key, def); },
           py::arg("key"), py::arg("default"))
      .def("has", &eoq::GGUFFile::has, py::arg("key"))
      .def("dequantize", [](const eoq::GGUFFile& f, const std::string& name) {
             return dequantize_tensor(f, tensor_or_throw(f, name));
           }, py::arg("name"),
           "float32 array in numpy order: shape reversed from GGUF (a 2-D weight is (ne1, ne0))")
      .def("dequantize", [](const eoq::GGUFFile& f, int64_t index) {
             return dequantize_tensor(f, tensor_at(f, index));
           }, py::arg("index"), "as dequantize(name), by position in the tensor table")
      .def("raw", [](const eoq::GGUFFile& f, const std::string& name) { return raw_bytes(tensor_or_throw(f, name)); },
           py::arg("name"), "the tensor's bytes as stored")
      .def("raw", [](const eoq::GGUFFile& f, int64_t index) { return raw_bytes(tensor_at(f, index)); },
           py::arg("index"))
      .def("require_supported",
           [](const eoq::GGUFFile& f, const std::string& name) { f.require_supported(tensor_or_throw(f, name)); },
           py::arg("name"))
      .def("require_supported",
           [](const eoq::GGUFFile& f, int64_t index) { f.require_supported(tensor_at(f, index)); },
           py::arg("index"));

  m.def(
      "dequantize_row",
      [](const std::string& type_name, py::handle data, int64_t n) {
        const GGMLType t = type_from_name(type_name);
        ByteView v(data);
        check_row_args(t, v.size(), n, "dequantize_row");
        py::array_t<float> out(n);
        eoq::dequantize_row_ref(t, v.data(), out.mutable_data(), n);
        return out;
      },
      py::arg("type_name"), py::arg("data"), py::arg("n"),
      "dequantize one row of n values (reference kernel)");

  m.def(
      "vec_dot",
      [](const std::string& type_name, py::handle data,
         py::array_t<float, py::array::c_style | py::array::forcecast> x) {
        const GGMLType t = type_from_name(type_name);
        ByteView v(data);
        if (x.ndim() != 1) eoq::fail(ErrorCode::invalid_arg, "vec_dot: x must be 1-D");
        const int64_t n = (int64_t)x.size();
        check_row_args(t, v.size(), n, "vec_dot");
        return eoq::vec_dot_ref(t, v.data(), x.data(), n);
      },
      py::arg("type_name"), py::arg("data"), py::arg("x"),
      "sum(dequantize(data) * x) by the reference kernel (double accumulation)");

  m.def(
      "quantize_row_q8_0",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> x) {
        if (x.ndim() != 1) eoq::fail(ErrorCode::invalid_arg, "quantize_row_q8_0: x must be 1-D");
        const int64_t n = (int64_t)x.size();
        if (n % 32 != 0)
          eoq::fail(ErrorCode::invalid_arg,
                    "quantize_row_q8_0: length " + std::to_string(n) + " is not a multiple of 32");
        py::array_t<uint8_t> out((py::ssize_t)(eoq::row_size(GGMLType::Q8_0, n)));
        eoq::quantize_row_q8_0_ref(x.data(), out.mutable_data(), n);
        return out;
      },
      py::arg("x"), "quantize a float32 row to Q8_0 blocks (reference, round to nearest)");
}

}  // namespace eoq_py
