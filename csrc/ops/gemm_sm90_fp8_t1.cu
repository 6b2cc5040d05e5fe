// sm90 W8A8 GEMM, FP8 E4M3 tile 1 (128 x 192 cooperative), the default FP8 tile since the H100 sweep of
// 2026-11-26 (docs/gemm.md). One file per tile-table entry (heuristics.h) so the CUTLASS instantiations
// compile in parallel; bf16 and fp16 output.
#include "turbodiffusion/gemm/w8a8_gemm_sm90.cuh"

template void td::w8a8_gemm_sm90<true, 1>(const td::W8A8GemmParams& p, cudaStream_t stream);
