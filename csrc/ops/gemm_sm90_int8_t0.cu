// sm90 W8A8 GEMM, INT8 tile 0 (128 x 256 cooperative), the default INT8 tile. One file per tile-table entry
// (heuristics.h) so the CUTLASS instantiations compile in parallel; bf16 and fp16 output.
#include "turbodiffusion/gemm/w8a8_gemm_sm90.cuh"

template void td::w8a8_gemm_sm90<false, 0>(const td::W8A8GemmParams& p, cudaStream_t stream);
