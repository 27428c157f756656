#include "base/ggml_type.h"

namespace eoq {

TypeInfo type_info(GGMLType t) {
  switch (t) {
    case GGMLType::F32: return {"F32", 1, 4, true};
    case GGMLType::F16: return {"F16", 1, 2, true};
    case GGMLType::BF16: return {"BF16", 1, 2, true};
    case GGMLType::Q4_0: return {"Q4_0", 32, 18, true};
    case GGMLType::Q4_1: return {"Q4_1", 32, 20, true};
    case GGMLType::Q5_0: return {"Q5_0", 32, 22, true};
    case GGMLType::Q5_1: return {"Q5_1", 32, 24, true};
    case GGMLType::Q8_0: return {"Q8_0", 32, 34, true};
    case GGMLType::Q8_1: return {"Q8_1", 32, 36, false};
    case GGMLType::Q2_K: return {"Q2_K", 256, 84, true};
    case GGMLType::Q3_K: return {"Q3_K", 256, 110, true};
    case GGMLType::Q4_K: return {"Q4_K", 256, 144, true};
    case GGMLType::Q5_K: return {"Q5_K", 256, 176, true};
    case GGMLType::Q6_K: return {"Q6_K", 256, 210, true};
    case GGMLType::Q8_K: return {"Q8_K", 256, 292, false};
    case GGMLType::IQ2_XXS: return {"IQ2_XXS", 256, 66, false};
    case GGMLType::IQ2_XS: return {"IQ2_XS", 256, 74, false};
    case GGMLType::IQ3_XXS: return {"IQ3_XXS", 256, 98, false};
    case GGMLType::IQ1_S: return {"IQ1_S", 256, 50, false};
    case GGMLType::IQ4_NL: return {"IQ4_NL", 32, 18, false};
    case GGMLType::IQ3_S: return {"IQ3_S", 256, 110, false};
    case GGMLType::IQ2_S: return {"IQ2_S", 256, 82, false};
    case GGMLType::IQ4_XS: return {"IQ4_XS", 256, 136, false};
    case GGMLType::I8: return {"I8", 1, 1, false};
    case GGMLType::I16: return {"I16", 1, 2, false};
    case GGMLType::I32: return {"I32", 1, 4, false};
    case GGMLType::I64: return {"I64", 1, 8, false};
    case GGMLType::F64: return {"F64", 1, 8, false};
    case GGMLType::IQ1_M: return {"IQ1_M", 256, 56, false};
    case GGMLType::TQ1_0: return {"TQ1_0", 256, 54, false};
    case GGMLType::TQ2_0: return {"TQ2_0", 256, 66, false};
    case GGMLType::MXFP4: return {"MXFP4", 32, 17, false};
  }
  return {nullptr, 0, 0, false};
}

const char* type_name(GGMLType t) {
  const char* n = type_info(t).name;
  return n ? n : "unknown";
}

size_t row_size(GGMLType t, int64_t n) {
  const TypeInfo ti = type_info(t);
  if (ti.block_size <= 0 || n < 0 || n % ti.block_size != 0) return 0;
  return (size_t)(n / ti.block_size) * ti.type_size;
}

}  // namespace eoq
