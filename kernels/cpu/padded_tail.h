// Rows of packed codes that a SIMD kernel reads `over` bytes past their end (it loads a fixed
// 4 or 8 bytes per group of coordinates). Inside an array the next rows absorb the overread;
// the last rows of the array are copied into a zero-padded buffer when the scan reaches them (by
// then they are in cache), so that no read passes the caller's codes (an array ending at a page
// boundary would fault).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace eoq {

class PaddedTail {
 public:
  // codes: m rows of rb bytes; over: bytes a kernel may read past the end of a row.
  PaddedTail(const uint8_t* codes, int64_t m, size_t rb, size_t over) : codes_(codes), rb_(rb), over_(over) {
    k_ = std::min<int64_t>(m, rb ? (int64_t)((over + rb - 1) / rb) : m);
    first_ = m - k_;
  }
  // Row t (0 <= t < m), safe to read `over` bytes past its end.
  const uint8_t* row(int64_t t) {
    if (t < first_) return codes_ + (size_t)t * rb_;
    if (!tail_) copy_tail();
    return tail_ + (size_t)(t - first_) * rb_;
  }

 private:
  void copy_tail() {
    const size_t need = (size_t)k_ * rb_ + over_;
    uint8_t* dst = small_;
    if (need > sizeof(small_)) {
      big_.assign(need, 0);
      dst = big_.data();
    } else {
      std::memset(small_, 0, need);
    }
    std::memcpy(dst, codes_ + (size_t)first_ * rb_, (size_t)k_ * rb_);
    tail_ = dst;
  }

  alignas(64) uint8_t small_[128];
  std::vector<uint8_t> big_;
  const uint8_t* codes_;
  const uint8_t* tail_ = nullptr;
  size_t rb_, over_;
  int64_t first_ = 0, k_ = 0;
};

}  // namespace eoq
