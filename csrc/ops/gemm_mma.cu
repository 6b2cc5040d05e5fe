// The mma.sync INT8 W8A8 GEMM (one kernel; the output type is chosen at run time in its epilogue).
#include "turbodiffusion/gemm/w8a8_gemm_mma.cuh"

namespace td {
void w8a8_gemm_mma_int8(const W8A8GemmParams& p, cudaStream_t stream) { launch_w8a8_gemm_mma(p, stream); }
}  // namespace td
