// Picks the kernel table once, from CPUID (and EOQ_ISA for tests/benchmarks).
#include <cstdlib>
#include <cstring>

#include "kernels/kernels.h"

namespace eoq {

const CpuKernels& cpu_kernels() {
  static const CpuKernels* chosen = [] {
    const char* want = std::getenv("EOQ_ISA");
    if (want && std::strcmp(want, "scalar") == 0) return &cpu_kernels_scalar();
    if (!(want && std::strcmp(want, "avx2") == 0))
      if (const CpuKernels* k = cpu_kernels_avx512vnni()) return k;
    if (const CpuKernels* k = cpu_kernels_avx2()) return k;
    return &cpu_kernels_scalar();
  }();
  return *chosen;
}

}  // namespace eoq
