// GGUF reader (versions 2 and 3): memory-mapped, typed metadata, tensor table.
//
// Every offset, length and count read from the file is checked against the file size before
// use; anything malformed raises eoq::Error(ErrorCode::format, "...") naming what is wrong.
// The file is untrusted input.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/ggml_type.h"

namespace eoq {

// GGUF metadata value types (gguf_type in the format spec).
enum class GGUFValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// One metadata value. Scalars are widened into i64/u64/f64 (whichever fits the type);
// arrays keep their element type and hold either numbers (as doubles and i64s) or strings.
struct GGUFValue {
  GGUFValueType type = GGUFValueType::UINT8;
  GGUFValueType elem_type = GGUFValueType::UINT8;  // for ARRAY
  int64_t i = 0;          // integer and bool scalars
  double f = 0;           // float scalars (also set for integers, for convenience)
  std::string s;          // STRING
  std::vector<int64_t> arr_i;       // ARRAY of integer/bool elements
  std::vector<double> arr_f;        // ARRAY of float elements
  std::vector<std::string> arr_s;   // ARRAY of strings
  size_t arr_len = 0;               // number of elements for ARRAY

  bool is_int() const;   // any integer or bool scalar type
  bool is_float() const; // FLOAT32 / FLOAT64
};

struct GGUFTensor {
  std::string name;
  GGMLType type;
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // innermost first: a 2-D weight has ne[1] rows of ne[0] values
  uint64_t offset = 0;            // relative to the data section
  const uint8_t* data = nullptr;  // into the mapping
  size_t nbytes = 0;

  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  size_t row_bytes() const;  // bytes of one row of ne[0] values
};

class GGUFFile {
 public:
  // Maps and parses the file. Throws Error(io) if it cannot be opened, Error(format) if malformed.
  // Tensor types are NOT checked here (unknown types are kept as-is); the model loader checks
  // them so the message can name the tensor: see require_supported().
  explicit GGUFFile(const std::string& path);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }
  const std::string& path() const { return path_; }

  // Metadata access. get_* throw Error(format) when the key is present with the wrong type;
  // the `def` overloads return def when the key is absent.
  bool has(const std::string& key) const;
  const GGUFValue* find(const std::string& key) const;  // nullptr if absent
  const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
  std::string get_str(const std::string& key) const;  // throws Error(format) if absent
  std::string get_str(const std::string& key, const std::string& def) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_float(const std::string& key) const;     // accepts integer values too
  double get_float(const std::string& key, double def) const;
  bool get_bool(const std::string& key, bool def) const;

  const std::vector<GGUFTensor>& tensors() const { return tensors_; }
  const GGUFTensor* find_tensor(const std::string& name) const;  // nullptr if absent
  const GGUFTensor& tensor(const std::string& name) const;       // throws Error(format) if absent

  // Throws Error(unsupported, "tensor 'NAME' has type IQ2_XS (17), which eoq does not support")
  // unless type_info(t.type).supported. The model loader calls it for every weight it uses.
  void require_supported(const GGUFTensor& t) const;

 private:
  std::string path_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, GGUFValue> kv_;
  std::vector<GGUFTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
  void parse();
};

}  // namespace eoq
