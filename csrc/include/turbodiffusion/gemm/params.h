// Arguments of the W8A8 GEMM kernels (torch-free). Row-major a [M, K] and w [N, K] (both K-major,
// the "TN" layout every 8-bit tensor-core instruction wants), row-major out [M, N].
#pragma once
#include <cstdint>

namespace td {

struct W8A8GemmParams {
  const void* a = nullptr;        // int8 / float8_e4m3fn [M, K], row stride lda (elements = bytes)
  const void* w = nullptr;        // same dtype, [N, K], row stride ldw
  const float* a_scale = nullptr; // [M] per-token scales
  const float* w_scale = nullptr; // [N] per-channel scales
  const void* bias = nullptr;     // [N] in the output dtype, or nullptr (then 0)
  void* out = nullptr;            // bf16 / fp16 [M, N], row stride ldo
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldw = 0, ldo = 0;
  bool out_bf16 = true;           // the mma.sync kernel picks the output type at run time
  int sm_count = 0;               // for the persistent (sm90) scheduler
  bool raster_along_m = false;    // sm90 scheduler raster order and swizzle (gemm::sm90_choose or an
  int swizzle = 1;                // explicit sm90_config of the op)
  int device = 0;
};

}  // namespace td
