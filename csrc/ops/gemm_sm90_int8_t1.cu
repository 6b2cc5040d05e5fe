// sm90 W8A8 GEMM, INT8 tile 1 (64 x 256 ping-pong). One file per tile-table entry
// (heuristics.h) so the CUTLASS instantiations compile in parallel; bf16 and fp16 output.
// A candidate: compiled only by the sweep build (TD_GEMM_ALL_CONFIGS=1), which keeps the default
// build from parsing CUTLASS for it (about 25 s of one core).
#include "turbodiffusion/gemm/heuristics.h"

#if TD_GEMM_ALL_CONFIGS
#include "turbodiffusion/gemm/w8a8_gemm_sm90.cuh"

template void td::w8a8_gemm_sm90<false, 1>(const td::W8A8GemmParams& p, cudaStream_t stream);
#else
static_assert(!td::gemm::kSm90Int8Tiles[1].default_build,
              "a default_build tile is compiled in every build: remove this file's #if TD_GEMM_ALL_CONFIGS");
#endif
