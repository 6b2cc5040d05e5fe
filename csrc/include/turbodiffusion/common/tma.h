// Host side of TMA: tiled tensor maps of 8-bit tensors (torch-free). cuTensorMapEncodeTiled is a
// driver API call; it is fetched through the runtime's driver entry point, so the extension does not
// link against libcuda.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

namespace td {

// A tensor map over `rank` dimensions of bytes, innermost first: dims[i] elements, strides_bytes[i]
// for dims 1..rank-1 (multiples of 16, base 16-byte aligned), boxes of box[i] elements. Boxes that
// reach past a dimension's end are zero-filled by the copy. Returns the driver's status.
inline CUresult encode_tma_u8(CUtensorMap* map, const void* base, cuuint32_t rank, const cuuint64_t* dims,
                              const cuuint64_t* strides_bytes, const cuuint32_t* box, CUtensorMapSwizzle swizzle) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return CUDA_ERROR_NOT_FOUND;
  const cuuint32_t unit[5] = {1, 1, 1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, rank, const_cast<void*>(base), dims, strides_bytes, box, unit,
                CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

}  // namespace td
