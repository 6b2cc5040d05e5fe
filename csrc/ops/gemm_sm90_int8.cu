// Instantiations of the sm90 INT8 W8A8 GEMM (bf16 and fp16 output); one file per input type so the
// two heaviest CUTLASS translation units compile in parallel.
#include "turbodiffusion/gemm/w8a8_gemm_sm90.cuh"

namespace td {
void w8a8_gemm_sm90_int8(const W8A8GemmParams& p, cudaStream_t stream) {
  if (p.out_bf16) {
    launch_w8a8_gemm_sm90<int8_t, cutlass::bfloat16_t>(p, stream);
  } else {
    launch_w8a8_gemm_sm90<int8_t, cutlass::half_t>(p, stream);
  }
}
}  // namespace td
