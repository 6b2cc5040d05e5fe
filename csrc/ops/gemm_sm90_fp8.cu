// Instantiations of the sm90 FP8 E4M3 W8A8 GEMM (bf16 and fp16 output).
#include "turbodiffusion/gemm/w8a8_gemm_sm90.cuh"

namespace td {
void w8a8_gemm_sm90_fp8(const W8A8GemmParams& p, cudaStream_t stream) {
  if (p.out_bf16) {
    launch_w8a8_gemm_sm90<cutlass::float_e4m3_t, cutlass::bfloat16_t>(p, stream);
  } else {
    launch_w8a8_gemm_sm90<cutlass::float_e4m3_t, cutlass::half_t>(p, stream);
  }
}
}  // namespace td
