// GGUF reader (v2/v3). The file is untrusted: every count, length and offset is checked
// against the bytes that remain before it is used, with overflow-safe arithmetic, and no
// container is sized from a count that the remaining bytes could not back.
//
// File layout (all little-endian):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x   { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32)
//   data section: tensor i's bytes at data_start + offset_i (offset_i a multiple of alignment)
// where string = u64 length + bytes (no terminator) and an ARRAY value is
// u32 elem_type | u64 count | count x element.
#include "engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <system_error>

namespace eoq {

namespace {

constexpr uint32_t kMaxDims = 4;
constexpr size_t kDefaultAlignment = 32;

const char* value_type_name(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::UINT8: return "UINT8";
    case GGUFValueType::INT8: return "INT8";
    case GGUFValueType::UINT16: return "UINT16";
    case GGUFValueType::INT16: return "INT16";
    case GGUFValueType::UINT32: return "UINT32";
    case GGUFValueType::INT32: return "INT32";
    case GGUFValueType::FLOAT32: return "FLOAT32";
    case GGUFValueType::BOOL: return "BOOL";
    case GGUFValueType::STRING: return "STRING";
    case GGUFValueType::ARRAY: return "ARRAY";
    case GGUFValueType::UINT64: return "UINT64";
    case GGUFValueType::INT64: return "INT64";
    case GGUFValueType::FLOAT64: return "FLOAT64";
  }
  return "unknown";
}

// Bytes one value of type t occupies; for STRING the minimum (its u64 length). 0 = invalid
// type number (ARRAY is handled by the caller).
uint64_t value_min_size(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::UINT8: case GGUFValueType::INT8: case GGUFValueType::BOOL: return 1;
    case GGUFValueType::UINT16: case GGUFValueType::INT16: return 2;
    case GGUFValueType::UINT32: case GGUFValueType::INT32: case GGUFValueType::FLOAT32: return 4;
    case GGUFValueType::UINT64: case GGUFValueType::INT64: case GGUFValueType::FLOAT64:
    case GGUFValueType::STRING: return 8;
    case GGUFValueType::ARRAY: return 12;  // u32 elem type + u64 count
  }
  return 0;
}

bool is_int_type(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::UINT8: case GGUFValueType::INT8: case GGUFValueType::UINT16:
    case GGUFValueType::INT16: case GGUFValueType::UINT32: case GGUFValueType::INT32:
    case GGUFValueType::UINT64: case GGUFValueType::INT64: case GGUFValueType::BOOL:
      return true;
    default:
      return false;
  }
}

bool is_float_type(GGUFValueType t) {
  return t == GGUFValueType::FLOAT32 || t == GGUFValueType::FLOAT64;
}

std::string u64s(uint64_t v) { return std::to_string(v); }

// s made safe for an error message: well-formed UTF-8 is kept; control characters and bytes
// that are not well-formed UTF-8 (names come from untrusted files) become \xNN, so the
// message always converts to a Python str. Long strings are cut at about 200 bytes.
std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string r;
  size_t k = 0;
  while (k < s.size() && r.size() < 200) {
    const unsigned char c = (unsigned char)s[k];
    size_t len = 0;
    if (c >= 0x20 && c < 0x7f) len = 1;
    else if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) len = 3;
    else if (c >= 0xf0 && c <= 0xf4) len = 4;
    bool ok = len > 0 && len <= s.size() - k;
    for (size_t j = 1; ok && j < len; j++) ok = ((unsigned char)s[k + j] & 0xc0) == 0x80;
    if (ok && len >= 3) {  // no overlong forms, UTF-16 surrogates or code points > U+10FFFF
      const unsigned char c1 = (unsigned char)s[k + 1];
      if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0) || (c == 0xf0 && c1 < 0x90) ||
          (c == 0xf4 && c1 >= 0x90))
        ok = false;
    }
    if (ok) {
      r.append(s, k, len);
      k += len;
    } else {
      r += "\\x";
      r += hex[c >> 4];
      r += hex[c & 15];
      k++;
    }
  }
  if (k < s.size()) r += "...";
  return r;
}

std::string quoted(const std::string& s) { return "'" + printable(s) + "'"; }

// Bounds-checked little-endian cursor over the mapping. Every read checks that the bytes
// exist; errors carry the path and the byte position.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t size, const std::string& path) : p_(p), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void bad(const std::string& msg) const {
    fail(ErrorCode::format, "GGUF: " + msg + " (file " + quoted(path_) + ")");
  }

  void need(uint64_t n, const std::string& what) const {
    if (n > remaining())
      bad(what + ": needs " + u64s(n) + " bytes at offset " + u64s(pos_) +
          " but only " + u64s(remaining()) + " remain (file size " + u64s(size_) + ")");
  }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // the file is little-endian; so is every target
    pos_ += sizeof(T);
    return v;
  }

  std::string str(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " (string length)");
    if (len > remaining())
      bad(what + ": string length " + u64s(len) + " at offset " + u64s(pos_ - 8) +
          " runs past end of file (" + u64s(remaining()) + " bytes remain)");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), (size_t)len);
    pos_ += (size_t)len;
    return s;
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

// Reads one scalar of type t (not ARRAY) into out's scalar fields.
void read_scalar(Cursor& c, GGUFValueType t, GGUFValue& out, const std::string& what) {
  switch (t) {
    case GGUFValueType::UINT8: out.i = c.read<uint8_t>(what); break;
    case GGUFValueType::INT8: out.i = c.read<int8_t>(what); break;
    case GGUFValueType::UINT16: out.i = c.read<uint16_t>(what); break;
    case GGUFValueType::INT16: out.i = c.read<int16_t>(what); break;
    case GGUFValueType::UINT32: out.i = c.read<uint32_t>(what); break;
    case GGUFValueType::INT32: out.i = c.read<int32_t>(what); break;
    case GGUFValueType::INT64: out.i = c.read<int64_t>(what); break;
    case GGUFValueType::UINT64: {
      const uint64_t u = c.read<uint64_t>(what);
      out.i = (int64_t)u;  // bit pattern kept; f holds the exact magnitude's nearest double
      out.f = (double)u;
      return;
    }
    case GGUFValueType::BOOL: out.i = c.read<uint8_t>(what) != 0; break;
    case GGUFValueType::FLOAT32: out.f = c.read<float>(what); return;
    case GGUFValueType::FLOAT64: out.f = c.read<double>(what); return;
    case GGUFValueType::STRING: out.s = c.str(what); return;
    case GGUFValueType::ARRAY: c.bad(what + ": nested array where a scalar was expected");
  }
  out.f = (double)out.i;
}

void read_value(Cursor& c, GGUFValueType t, GGUFValue& out, const std::string& what) {
  out.type = t;
  if (t != GGUFValueType::ARRAY) {
    read_scalar(c, t, out, what);
    return;
  }
  const size_t at = c.pos();
  const uint32_t et_raw = c.read<uint32_t>(what + " (array element type)");
  const GGUFValueType et = (GGUFValueType)et_raw;
  if (et == GGUFValueType::ARRAY)
    c.bad(what + ": arrays of arrays are not supported (at offset " + u64s(at) + ")");
  const uint64_t elem_min = value_min_size(et);
  if (elem_min == 0)
    c.bad(what + ": invalid array element type " + u64s(et_raw) + " at offset " + u64s(at));
  const uint64_t n = c.read<uint64_t>(what + " (array length)");
  // Every element takes at least elem_min bytes, so this bounds n before anything is sized.
  if (n > c.remaining() / elem_min)
    c.bad(what + ": array of " + u64s(n) + " " + value_type_name(et) + " elements at offset " +
          u64s(at) + " cannot fit in the " + u64s(c.remaining()) + " bytes that remain");
  out.elem_type = et;
  out.arr_len = (size_t)n;
  GGUFValue tmp;
  if (et == GGUFValueType::STRING) {
    out.arr_s.reserve((size_t)n);
    for (uint64_t k = 0; k < n; k++) out.arr_s.push_back(c.str(what + " element " + u64s(k)));
  } else if (is_float_type(et)) {
    out.arr_f.reserve((size_t)n);
    for (uint64_t k = 0; k < n; k++) {
      read_scalar(c, et, tmp, what);
      out.arr_f.push_back(tmp.f);
    }
  } else {
    out.arr_i.reserve((size_t)n);
    for (uint64_t k = 0; k < n; k++) {
      read_scalar(c, et, tmp, what);
      out.arr_i.push_back(tmp.i);
    }
  }
}

}  // namespace

bool GGUFValue::is_int() const { return is_int_type(type); }
bool GGUFValue::is_float() const { return is_float_type(type); }

size_t GGUFTensor::row_bytes() const { return row_size(type, ne[0]); }

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO must not hang; it is then rejected as not a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    fail(ErrorCode::io, "GGUF: cannot open " + quoted(path) + ": " + std::generic_category().message(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(ErrorCode::io, "GGUF: cannot stat " + quoted(path) + ": " + std::generic_category().message(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::io, "GGUF: " + quoted(path) + " is not a regular file");
  }
  size_ = (size_t)st.st_size;
  if (size_ == 0) {
    ::close(fd);
    fail(ErrorCode::format, "GGUF: file " + quoted(path) + " is empty");
  }
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int e = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (p == MAP_FAILED)
    fail(ErrorCode::io, "GGUF: cannot mmap " + quoted(path) + ": " + std::generic_category().message(e));
  map_ = static_cast<const uint8_t*>(p);
  try {
    parse();
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), size_);
    map_ = nullptr;
    throw;
  }
}

GGUFFile::~GGUFFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

void GGUFFile::parse() {
  Cursor c(map_, size_, path_);

  // --- header ---
  c.need(4, "magic");
  if (std::memcmp(map_, "GGUF", 4) != 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%02x %02x %02x %02x", map_[0], map_[1], map_[2], map_[3]);
    c.bad(std::string("not a GGUF file: magic bytes are ") + buf + ", expected 47 47 55 46 (\"GGUF\")");
  }
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if ((version_ & 0xffff) == 0 && swapped >= 1 && swapped <= 3)
      c.bad("big-endian GGUF files are not supported (version field reads " + u64s(swapped) +
            " byte-swapped)");
    if (version_ == 1)
      c.bad("GGUF version 1 is not supported (it predates 64-bit counts); eoq reads versions 2 and 3");
    c.bad("unsupported GGUF version " + u64s(version_) + "; eoq reads versions 2 and 3");
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  {
    // Smallest possible entries: kv = u64 key length + u32 type + 1-byte value;
    // tensor info = u64 name length + u32 n_dims + one u64 ne + u32 type + u64 offset.
    const uint64_t rem = c.remaining();
    if (n_kv > rem / 13 || n_tensors > rem / 32 || n_kv * 13 + n_tensors * 32 > rem)
      c.bad("header claims " + u64s(n_tensors) + " tensors and " + u64s(n_kv) +
            " metadata entries, which cannot fit in a file of " + u64s(size_) + " bytes");
  }

  // --- metadata ---
  for (uint64_t k = 0; k < n_kv; k++) {
    const size_t at = c.pos();
    std::string key = c.str("metadata entry " + u64s(k) + " key");
    const std::string what = "metadata entry " + u64s(k) + " " + quoted(key);
    if (kv_.count(key)) c.bad(what + ": duplicate key (at offset " + u64s(at) + ")");
    const uint32_t t_raw = c.read<uint32_t>(what + " type");
    const GGUFValueType t = (GGUFValueType)t_raw;
    if (value_min_size(t) == 0)
      c.bad(what + ": invalid value type " + u64s(t_raw) + " at offset " + u64s(c.pos() - 4));
    GGUFValue v;
    read_value(c, t, v, what);
    kv_.emplace(std::move(key), std::move(v));
  }

  // --- alignment ---
  alignment_ = kDefaultAlignment;
  if (const GGUFValue* a = find("general.alignment")) {
    if (!a->is_int() || a->type == GGUFValueType::BOOL)
      c.bad(std::string("general.alignment has type ") + value_type_name(a->type) +
            ", expected an integer");
    const uint64_t av = (uint64_t)a->i;
    const bool neg = a->type != GGUFValueType::UINT64 && a->i < 0;
    if (neg || av == 0 || (av & (av - 1)) != 0)
      c.bad("general.alignment " + std::to_string(a->i) + " is not a non-zero power of two");
    if (av > (uint64_t)SIZE_MAX / 2) c.bad("general.alignment " + u64s(av) + " is absurdly large");
    alignment_ = (size_t)av;
  }

  // --- tensor table ---
  // n_tensors <= remaining/32 was checked above, so this reserve is backed by file bytes.
  tensors_.reserve((size_t)n_tensors);
  for (uint64_t k = 0; k < n_tensors; k++) {
    const size_t at = c.pos();
    GGUFTensor t;
    t.name = c.str("tensor " + u64s(k) + " name");
    const std::string what = "tensor " + u64s(k) + " " + quoted(t.name);
    if (tensor_index_.count(t.name)) c.bad(what + ": duplicate tensor name (at offset " + u64s(at) + ")");
    const uint32_t n_dims = c.read<uint32_t>(what + " n_dims");
    if (n_dims == 0 || n_dims > kMaxDims)
      c.bad(what + ": n_dims " + u64s(n_dims) + " is not in 1.." + u64s(kMaxDims));
    t.n_dims = (int)n_dims;
    uint64_t n_el = 1;  // product so far, kept <= INT64_MAX
    for (uint32_t d = 0; d < n_dims; d++) {
      const uint64_t v = c.read<uint64_t>(what + " ne[" + u64s(d) + "]");
      if (v == 0 || v > (uint64_t)INT64_MAX)
        c.bad(what + ": ne[" + u64s(d) + "] = " + std::to_string((int64_t)v) + " is not positive");
      if (__builtin_mul_overflow(n_el, v, &n_el) || n_el > (uint64_t)INT64_MAX)
        c.bad(what + ": element count overflows int64");
      t.ne[d] = (int64_t)v;
    }
    const uint32_t type_raw = c.read<uint32_t>(what + " type");
    t.type = (GGMLType)type_raw;
    t.offset = c.read<uint64_t>(what + " offset");

    const TypeInfo ti = type_info(t.type);
    if (ti.block_size > 0) {
      if (t.ne[0] % ti.block_size != 0)
        c.bad(what + ": ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of the " +
              ti.name + " block size " + std::to_string(ti.block_size));
      // nbytes = (ne0 / block) * type_size * rows; rows * ne0 fits int64, so only the
      // type_size factor can overflow.
      uint64_t nb = 0;
      if (__builtin_mul_overflow((uint64_t)(t.ne[0] / ti.block_size), (uint64_t)ti.type_size, &nb) ||
          __builtin_mul_overflow(nb, (uint64_t)(n_el / (uint64_t)t.ne[0]), &nb) || nb > (uint64_t)SIZE_MAX)
        c.bad(what + ": byte size overflows");
      t.nbytes = (size_t)nb;
    } else {
      t.nbytes = 0;  // unknown type number: kept for require_supported() to name
    }
    if (t.offset % alignment_ != 0)
      c.bad(what + ": data offset " + u64s(t.offset) + " is not a multiple of the alignment " +
            u64s(alignment_));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // --- data section ---
  const uint64_t hdr_end = c.pos();
  uint64_t data_start = hdr_end;
  if (hdr_end % alignment_ != 0 &&
      __builtin_add_overflow(hdr_end, alignment_ - hdr_end % alignment_, &data_start))
    c.bad("data section start overflows");
  if (!tensors_.empty() && data_start > size_)
    c.bad("data section would start at offset " + u64s(data_start) + ", past end of file (size " +
          u64s(size_) + ")");
  for (size_t k = 0; k < tensors_.size(); k++) {
    GGUFTensor& t = tensors_[k];
    const uint64_t room = size_ - data_start;
    if (t.offset > room || t.nbytes > room - t.offset) {
      uint64_t s = 0, e = 0;
      const bool ovf = __builtin_add_overflow(data_start, t.offset, &s) ||
                       __builtin_add_overflow(s, (uint64_t)t.nbytes, &e);
      c.bad("tensor " + u64s(k) + " " + quoted(t.name) + " data " +
            (ovf ? "[data_start " + u64s(data_start) + " + offset " + u64s(t.offset) + ", +" +
                       u64s(t.nbytes) + " bytes)"
                 : "[" + u64s(s) + ", " + u64s(e) + ")") +
            " past end of file (size " + u64s(size_) + ")");
    }
    t.data = map_ + data_start + t.offset;
  }
}

bool GGUFFile::has(const std::string& key) const { return kv_.count(key) != 0; }

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, const std::string& key, GGUFValueType t,
                             const char* expected) {
  fail(ErrorCode::format, "GGUF: metadata key " + quoted(key) + " has type " + value_type_name(t) +
                              ", expected " + expected + " (file " + quoted(path) + ")");
}
[[noreturn]] void missing(const std::string& path, const std::string& key) {
  fail(ErrorCode::format, "GGUF: missing metadata key " + quoted(key) + " (file " + quoted(path) + ")");
}
}  // namespace

std::string GGUFFile::get_str(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) missing(path_, key);
  if (v->type != GGUFValueType::STRING) wrong_type(path_, key, v->type, "STRING");
  return v->s;
}

std::string GGUFFile::get_str(const std::string& key, const std::string& def) const {
  return has(key) ? get_str(key) : def;
}

int64_t GGUFFile::get_int(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) missing(path_, key);
  if (!v->is_int()) wrong_type(path_, key, v->type, "an integer");
  if (v->type == GGUFValueType::UINT64 && v->i < 0)
    fail(ErrorCode::format, "GGUF: metadata key " + quoted(key) + " value " + u64s((uint64_t)v->i) +
                                " does not fit int64 (file " + quoted(path_) + ")");
  return v->i;
}

int64_t GGUFFile::get_int(const std::string& key, int64_t def) const {
  return has(key) ? get_int(key) : def;
}

double GGUFFile::get_float(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) missing(path_, key);
  if (!v->is_float() && !v->is_int()) wrong_type(path_, key, v->type, "a number");
  return v->f;
}

double GGUFFile::get_float(const std::string& key, double def) const {
  return has(key) ? get_float(key) : def;
}

bool GGUFFile::get_bool(const std::string& key, bool def) const {
  const GGUFValue* v = find(key);
  if (!v) return def;
  if (v->type != GGUFValueType::BOOL) wrong_type(path_, key, v->type, "BOOL");
  return v->i != 0;
}

const GGUFTensor* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GGUFTensor& GGUFFile::tensor(const std::string& name) const {
  const GGUFTensor* t = find_tensor(name);
  if (!t) fail(ErrorCode::format, "GGUF: missing tensor " + quoted(name) + " (file " + quoted(path_) + ")");
  return *t;
}

void GGUFFile::require_supported(const GGUFTensor& t) const {
  const TypeInfo ti = type_info(t.type);
  if (ti.supported) return;
  fail(ErrorCode::unsupported, "tensor " + quoted(t.name) + " has type " +
                                   (ti.name ? std::string(ti.name) : std::string("unknown")) + " (" +
                                   u64s((uint32_t)t.type) + "), which eoq does not support");
}

}  // namespace eoq
