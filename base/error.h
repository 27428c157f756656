// eoq::Error: the one exception type the engine throws for bad input (malformed files,
// unsupported types, invalid parameters, prompts too long). Bindings map it to
// eoq.EoqError in Python and to an error code plus message in the C API.
#pragma once
#include <stdexcept>
#include <string>

namespace eoq {

enum class ErrorCode : int {
  ok = 0,
  io = 1,            // file missing, unreadable, mmap failed
  format = 2,        // malformed or truncated GGUF, bad metadata
  unsupported = 3,   // unsupported tensor type / architecture / tokenizer
  invalid_arg = 4,   // bad parameter from the caller
  context_full = 5,  // prompt longer than the context
  invalid_utf8 = 6,  // text input is not valid UTF-8
  internal = 7,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void fail(ErrorCode code, const std::string& msg) { throw Error(code, msg); }

}  // namespace eoq
